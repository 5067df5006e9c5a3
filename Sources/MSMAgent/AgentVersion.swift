/// The agent's version, shown by `--version` and in `ms_service_metric_build_info`.
public enum AgentVersion {
    public static let version = "0.1.0"
}
