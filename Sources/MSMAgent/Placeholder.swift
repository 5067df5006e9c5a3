import MSMCore
import MSMArtifacts
public enum AgentPlaceholder { public static func hash() -> String { Artifacts.providerHash } }
