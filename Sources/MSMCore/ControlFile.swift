import Foundation

/// The control file the agent writes for providers (docs/protocol.md, "Control file").
/// Keys are snake_case; absent versions, handlers and expressions are written as `null`.
public struct ControlFile: Codable, Sendable, Equatable {
    public static let abiVersion = 1

    public var abi: Int
    /// Increases on every change; a provider applies each generation once.
    public var generation: UInt64
    /// false: providers restore every original function, then ack.
    public var enabled: Bool
    public var agentPid: Int32
    public var probes: [ControlProbe]
    /// Provider pid (as the provider sees it) → a request counter: a provider whose counter
    /// changed announces its series, probe states and ack again, without re-applying (the
    /// agent asks after samples arrived for series whose announcement was lost).
    public var resend: [String: UInt64]

    public init(abi: Int = ControlFile.abiVersion, generation: UInt64, enabled: Bool, agentPid: Int32,
                probes: [ControlProbe], resend: [String: UInt64] = [:]) {
        self.abi = abi
        self.generation = generation
        self.enabled = enabled
        self.agentPid = agentPid
        self.probes = probes
        self.resend = resend
    }

    /// Builds the file from a validated config: probe id = index of the entry.
    public init(config: SymbolConfig, generation: UInt64, enabled: Bool, agentPid: Int32,
                resend: [String: UInt64] = [:]) {
        self.init(generation: generation, enabled: enabled, agentPid: agentPid,
                  probes: config.entries.enumerated().map { ControlProbe(id: $0.offset, entry: $0.element) },
                  resend: resend)
    }

    enum CodingKeys: String, CodingKey {
        case abi, generation, enabled, probes, resend
        case agentPid = "agent_pid"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        abi = try c.decode(Int.self, forKey: .abi)
        generation = try c.decode(UInt64.self, forKey: .generation)
        enabled = try c.decode(Bool.self, forKey: .enabled)
        agentPid = try c.decode(Int32.self, forKey: .agentPid)
        probes = try c.decode([ControlProbe].self, forKey: .probes)
        resend = try c.decodeIfPresent([String: UInt64].self, forKey: .resend) ?? [:]
    }

    /// `resend` only when the agent asked someone (docs/protocol.md).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(abi, forKey: .abi)
        try c.encode(generation, forKey: .generation)
        try c.encode(enabled, forKey: .enabled)
        try c.encode(agentPid, forKey: .agentPid)
        try c.encode(probes, forKey: .probes)
        if !resend.isEmpty { try c.encode(resend, forKey: .resend) }
    }

    /// Compact UTF-8 JSON with sorted keys (stable bytes for the same content).
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try enc.encode(self)
    }

    /// Same as `jsonData()`.
    public func encoded() throws -> Data { try jsonData() }
}

public struct ControlProbe: Codable, Sendable, Equatable {
    public var id: Int
    public var symbol: String
    public var minVersion: String?
    public var maxVersion: String?
    public var metrics: [ControlMetric]
    /// `module.path:function` called with a context after each call (docs/config.md), or nil.
    public var handler: String?
    /// `call` or `block` (docs/protocol.md); always written. A provider that predates the key
    /// ignores it and times the call of the function.
    public var scope: ProbeScope

    public init(id: Int, symbol: String, minVersion: String?, maxVersion: String?, metrics: [ControlMetric],
                handler: String? = nil, scope: ProbeScope = .call) {
        self.id = id
        self.symbol = symbol
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.metrics = metrics
        self.handler = handler
        self.scope = scope
    }

    public init(id: Int, entry: SymbolEntry) {
        self.init(id: id, symbol: entry.symbol, minVersion: entry.minVersion, maxVersion: entry.maxVersion,
                  metrics: entry.metrics.map(ControlMetric.init(spec:)), handler: entry.handler,
                  scope: entry.scope)
    }

    enum CodingKeys: String, CodingKey {
        case id, symbol, metrics, handler, scope
        case minVersion = "min_version"
        case maxVersion = "max_version"
    }

    /// A file without `scope` (written before the key existed) means `call`.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(id: try c.decode(Int.self, forKey: .id),
                  symbol: try c.decode(String.self, forKey: .symbol),
                  minVersion: try c.decodeIfPresent(String.self, forKey: .minVersion),
                  maxVersion: try c.decodeIfPresent(String.self, forKey: .maxVersion),
                  metrics: try c.decode([ControlMetric].self, forKey: .metrics),
                  handler: try c.decodeIfPresent(String.self, forKey: .handler),
                  scope: try c.decodeIfPresent(ProbeScope.self, forKey: .scope) ?? .call)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(symbol, forKey: .symbol)
        try c.encode(minVersion, forKey: .minVersion)  // null when absent
        try c.encode(maxVersion, forKey: .maxVersion)
        try c.encode(metrics, forKey: .metrics)
        try c.encode(handler, forKey: .handler)  // null when absent
        try c.encode(scope, forKey: .scope)
    }
}

public struct ControlMetric: Codable, Sendable, Equatable {
    /// Without the `vllm_profiling_` prefix.
    public var name: String
    public var type: MetricType
    public var expr: String?
    public var labels: [LabelSpec]

    public init(name: String, type: MetricType, expr: String?, labels: [LabelSpec]) {
        self.name = name
        self.type = type
        self.expr = expr
        self.labels = labels
    }

    public init(spec: MetricSpec) {
        self.init(name: spec.name, type: spec.type, expr: spec.expr, labels: spec.labels)
    }

    enum CodingKeys: String, CodingKey { case name, type, expr, labels }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(type, forKey: .type)
        try c.encode(expr, forKey: .expr)  // null when absent
        try c.encode(labels.map(EncodedLabel.init), forKey: .labels)
    }
}

/// A label as written to the control file: `expr` is null for labels the handler passes.
private struct EncodedLabel: Encodable {
    let label: LabelSpec
    init(_ label: LabelSpec) { self.label = label }

    enum CodingKeys: String, CodingKey { case name, expr }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(label.name, forKey: .name)
        try c.encode(label.expr, forKey: .expr)
    }
}
