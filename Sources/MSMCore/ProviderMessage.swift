import Foundation

/// Metadata a provider sends as an `MSM_KIND_JSON` payload (docs/protocol.md).
public enum ProviderMessage: Sendable, Equatable {
    case hello(HelloInfo)
    case series(SeriesAnnouncement)
    case probe(ProbeReport)
    case exprError(ExprErrorReport)
    case ack(AckReport)
    case bye(reason: String)
    /// A message type this agent does not know (newer provider); ignored.
    case unknown(type: String)
}

/// `hello`: once per (process, generation) before anything else.
public struct HelloInfo: Sendable, Equatable, Codable {
    public var pid: Int32?
    public var python: String?
    public var implementation: String?
    public var executable: String?
    public var argv: [String]
    public var title: String?
    /// nil when vLLM is not importable in the target.
    public var vllmVersion: String?
    public var providerVersion: String?
    public var abi: Int?

    public init(pid: Int32? = nil, python: String? = nil, implementation: String? = nil, executable: String? = nil,
                argv: [String] = [], title: String? = nil, vllmVersion: String? = nil,
                providerVersion: String? = nil, abi: Int? = nil) {
        self.pid = pid
        self.python = python
        self.implementation = implementation
        self.executable = executable
        self.argv = argv
        self.title = title
        self.vllmVersion = vllmVersion
        self.providerVersion = providerVersion
        self.abi = abi
    }
}

/// `series`: a per-process series id and its metric and labels (without `dp`).
public struct SeriesAnnouncement: Sendable, Equatable {
    public var id: UInt32
    public var metric: String
    public var labels: [String: String]
    public init(id: UInt32, metric: String, labels: [String: String]) {
        self.id = id
        self.metric = metric
        self.labels = labels
    }
}

/// Probe states a provider reports.
public enum ProbeStateName {
    public static let active = "active"
    public static let notFound = "not_found"
    public static let versionExcluded = "version_excluded"
    public static let notPresent = "not_present"
    public static let error = "error"
    /// A reference-tool handler named in the config that has no built-in equivalent for
    /// this symbol (the entry's own timers and expressions are still recorded).
    public static let builtinHandlerUnavailable = "builtin_handler_unavailable"
    /// The states the protocol defines; any other is reported as `error`.
    public static let all: Set<String> = [active, notFound, versionExcluded, notPresent, error, builtinHandlerUnavailable]
}

/// `probe`: state of one probe in one process.
public struct ProbeReport: Sendable, Equatable {
    public var probe: Int
    /// `ProbeStateName` values; unknown strings are kept as sent.
    public var state: String
    public var detail: String
    public init(probe: Int, state: String, detail: String) {
        self.probe = probe
        self.state = state
        self.detail = detail
    }
}

/// `expr_error`: cumulative count of failing expressions of one metric in one process.
public struct ExprErrorReport: Sendable, Equatable {
    public var probe: Int
    public var metric: String
    public var count: UInt64
    public var message: String
    public init(probe: Int, metric: String, count: UInt64, message: String) {
        self.probe = probe
        self.metric = metric
        self.count = count
        self.message = message
    }
}

/// `ack`: a control-file generation was applied.
public struct AckReport: Sendable, Equatable {
    public var generation: UInt64
    public var enabled: Bool
    /// Number of functions instrumented (a boolean is read as 0/1).
    public var instrumented: Int
    public init(generation: UInt64, enabled: Bool, instrumented: Int) {
        self.generation = generation
        self.enabled = enabled
        self.instrumented = instrumented
    }
}

extension ProviderMessage {
    public struct DecodingError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Decodes one JSON object. Unknown fields are ignored; missing required fields throw.
    public static func decode(json: Data) throws(DecodingError) -> ProviderMessage {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: json, options: [])
        } catch {
            throw DecodingError(description: "not JSON")
        }
        guard let obj = any as? [String: Any] else { throw DecodingError(description: "not a JSON object") }
        guard let type = obj["type"] as? String else { throw DecodingError(description: "missing \"type\"") }
        let f = Fields(obj: obj, type: type)
        switch type {
        case "hello":
            return .hello(HelloInfo(
                pid: f.optInt("pid").map { Int32(truncatingIfNeeded: $0) },
                python: f.optString("python"), implementation: f.optString("implementation"),
                executable: f.optString("executable"),
                argv: (obj["argv"] as? [Any])?.map { Fields.text($0) } ?? [],
                title: f.optString("title"), vllmVersion: f.optString("vllm_version"),
                providerVersion: f.optString("provider_version"), abi: f.optInt("abi")))
        case "series":
            let id = try f.int("id")
            guard id >= 0, id <= Int(UInt32.max) else { throw DecodingError(description: "series: id out of range") }
            var labels: [String: String] = [:]
            if let raw = obj["labels"] {
                guard let dict = raw as? [String: Any] else {
                    throw DecodingError(description: "series: labels is not an object")
                }
                for (k, v) in dict { labels[k] = Fields.text(v) }
            }
            return .series(SeriesAnnouncement(id: UInt32(id), metric: try f.string("metric"), labels: labels))
        case "probe":
            return .probe(ProbeReport(probe: try f.int("probe"), state: try f.string("state"),
                                      detail: f.optString("detail") ?? ""))
        case "expr_error":
            let count = try f.int("count")
            return .exprError(ExprErrorReport(probe: try f.int("probe"), metric: try f.string("metric"),
                                              count: UInt64(max(0, count)), message: f.optString("message") ?? ""))
        case "ack":
            let gen = try f.int("generation")
            let instrumented = f.optInt("instrumented") ?? ((obj["instrumented"] as? Bool).map { $0 ? 1 : 0 } ?? 0)
            return .ack(AckReport(generation: UInt64(max(0, gen)), enabled: f.optBool("enabled") ?? true,
                                  instrumented: instrumented))
        case "bye":
            return .bye(reason: f.optString("reason") ?? "")
        default:
            return .unknown(type: type)
        }
    }

    private struct Fields {
        let obj: [String: Any]
        let type: String

        func int(_ key: String) throws(DecodingError) -> Int {
            guard let v = optInt(key) else { throw DecodingError(description: "\(type): missing or non-integer \"\(key)\"") }
            return v
        }
        func optInt(_ key: String) -> Int? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            if let i = v as? Int { return i }
            if let d = v as? Double, d.rounded() == d, abs(d) < 9e18 { return Int(d) }
            return nil
        }
        func string(_ key: String) throws(DecodingError) -> String {
            guard let v = obj[key] as? String else { throw DecodingError(description: "\(type): missing or non-string \"\(key)\"") }
            return v
        }
        func optString(_ key: String) -> String? {
            guard let v = obj[key], !(v is NSNull) else { return nil }
            return Fields.text(v)
        }
        func optBool(_ key: String) -> Bool? { obj[key] as? Bool }

        /// A JSON scalar as label/text value: strings as is, numbers and booleans spelled out.
        static func text(_ v: Any) -> String {
            if let s = v as? String { return s }
            if v is NSNull { return "" }
            if let n = v as? NSNumber { return n.stringValue }
            return String(describing: v)
        }
    }
}
