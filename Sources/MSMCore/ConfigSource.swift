/// Where the symbol config comes from: `--config`, else `$MS_SERVICE_METRIC_VLLM_CONFIG`,
/// else the built-in default (Config/default.yaml, embedded in the binary by the caller).
public enum ConfigSource: Sendable, Equatable, CustomStringConvertible {
    case file(String)
    case builtIn

    /// Name of the environment variable the reference tool also reads.
    public static let environmentVariable = "MS_SERVICE_METRIC_VLLM_CONFIG"
    /// How the built-in default is named in messages and in `status`.
    public static let builtInName = "<built-in>"

    /// Resolves the source; empty strings count as unset.
    public static func resolve(explicitPath: String?, environment: [String: String]) -> ConfigSource {
        if let p = explicitPath, !p.isEmpty { return .file(p) }
        if let p = environment[environmentVariable], !p.isEmpty { return .file(p) }
        return .builtIn
    }

    public var description: String {
        switch self {
        case .file(let p): return p
        case .builtIn: return Self.builtInName
        }
    }

    /// Loads and validates the config from this source; `builtInText` is the default YAML.
    public func load(builtInText: String) throws(ConfigErrorList) -> SymbolConfig {
        switch self {
        case .file(let p): return try ConfigParser.load(path: p)
        case .builtIn: return try ConfigParser.parse(yaml: builtInText, file: Self.builtInName)
        }
    }
}
