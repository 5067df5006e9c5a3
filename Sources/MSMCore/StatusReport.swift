import Foundation

/// Target states in `status`.
public enum TargetState: String, Sendable, Codable, CaseIterable {
    case attached
    case noProvider = "no_provider"
    case exited
    case error
}

/// What the agent knows about itself, for `status`.
public struct AgentFacts: Sendable, Equatable {
    public var pid: Int32
    public var listen: String
    /// Config path, or `<built-in>`.
    public var configPath: String
    public var generation: UInt64
    public init(pid: Int32, listen: String, configPath: String, generation: UInt64) {
        self.pid = pid
        self.listen = listen
        self.configPath = configPath
        self.generation = generation
    }
}

/// What the agent knows about one target process, for `status`.
public struct TargetFacts: Sendable, Equatable {
    public var pid: Int32
    public var state: TargetState
    /// E.g. `main`, `api_server`, `engine_core`, `worker`.
    public var role: String
    /// Process title; the provider's `hello` title is used when empty.
    public var title: String
    /// How the provider got in (`exec`, `injected`, ...), nil when unknown or absent.
    public var provider: String?
    /// DP rank as the agent determined it; used when the aggregator has no record of the process.
    public var dp: Int?
    /// Problem description for `error` targets; shown as a note.
    public var detail: String
    /// Python version as the agent found it (injection); the provider's `hello` wins.
    public var python: String?
    public init(pid: Int32, state: TargetState, role: String, title: String = "", provider: String? = nil,
                dp: Int? = nil, detail: String = "", python: String? = nil) {
        self.pid = pid
        self.state = state
        self.role = role
        self.title = title
        self.provider = provider
        self.dp = dp
        self.detail = detail
        self.python = python
    }
}

/// `status --json` (docs/cli.md).
public struct StatusReport: Codable, Sendable, Equatable {
    public var agentPid: Int32
    public var listen: String
    public var config: String
    public var generation: UInt64
    public var events: UInt64
    public var drops: UInt64
    public var truncated: UInt64
    public var readErrors: UInt64
    public var orphanSamples: UInt64
    public var expressionErrors: UInt64
    public var targets: [Target]
    public var probes: [Probe]
    public var notes: [String]

    public struct Target: Codable, Sendable, Equatable {
        public var pid: Int32
        public var state: TargetState
        public var role: String
        public var dp: Int
        public var title: String
        public var python: String?
        public var provider: String?
        /// Last generation the provider acknowledged.
        public var generation: UInt64?
        public var probes: [TargetProbe]

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pid, forKey: .pid)
            try c.encode(state, forKey: .state)
            try c.encode(role, forKey: .role)
            try c.encode(dp, forKey: .dp)
            try c.encode(title, forKey: .title)
            try c.encode(python, forKey: .python)
            try c.encode(provider, forKey: .provider)
            try c.encode(generation, forKey: .generation)
            try c.encode(probes, forKey: .probes)
        }
    }

    public struct TargetProbe: Codable, Sendable, Equatable {
        public var id: Int
        public var symbol: String
        /// Reported state, or `pending` when the provider has not reported it yet.
        public var state: String
        public var detail: String
        public var hits: UInt64
    }

    public struct Probe: Codable, Sendable, Equatable {
        public var id: Int
        public var symbol: String
        public var hits: UInt64
        /// Live processes per state.
        public var states: [String: Int]
    }

    enum CodingKeys: String, CodingKey {
        case agentPid = "agent_pid", listen, config, generation, events, drops, truncated
        case readErrors = "read_errors", orphanSamples = "orphan_samples", expressionErrors = "expression_errors"
        case targets, probes, notes
    }

    /// Builds the report from a snapshot plus agent facts. `notes` from the agent come
    /// first; notes on expression errors and on targets without vLLM are added.
    public init(snapshot: AggregatorSnapshot, agent: AgentFacts, targets: [TargetFacts], notes: [String] = []) {
        agentPid = agent.pid
        listen = agent.listen
        config = agent.configPath
        generation = agent.generation
        events = snapshot.stats.events
        drops = snapshot.kernel.drops
        truncated = snapshot.kernel.truncated
        readErrors = snapshot.kernel.readErrors
        orphanSamples = snapshot.stats.orphanSamples
        expressionErrors = snapshot.stats.expressionErrors
        probes = snapshot.probes.map { Probe(id: $0.id, symbol: $0.symbol, hits: $0.hits, states: $0.states) }
        var allNotes = notes
        self.targets = targets.sorted { $0.pid < $1.pid }.map { t in
            let p = snapshot.process(t.pid)
            var probes: [TargetProbe] = []
            if let p {
                probes = snapshot.probes.map { s in
                    let r = p.state(probe: s.id)
                    return TargetProbe(id: s.id, symbol: s.symbol, state: r?.state ?? "pending",
                                       detail: r?.detail ?? "", hits: p.hits(probe: s.id))
                }
                for e in p.exprErrors {
                    let symbol = snapshot.probes.indices.contains(e.probe) ? snapshot.probes[e.probe].symbol : "probe \(e.probe)"
                    allNotes.append("pid \(t.pid): \(e.count) expression error(s) in \(e.metric) (\(symbol)): \(e.message)")
                }
                if let h = p.hello, h.vllmVersion == nil {
                    allNotes.append("vLLM not importable in pid \(t.pid): min_version/max_version ignored")
                }
            }
            if !t.detail.isEmpty { allNotes.append("pid \(t.pid): \(t.state.rawValue): \(t.detail)") }
            let title = t.title.isEmpty ? (p?.hello?.title ?? "") : t.title
            return Target(pid: t.pid, state: t.state, role: t.role, dp: p?.dp ?? t.dp ?? -1, title: title,
                          python: p?.hello?.python ?? t.python, provider: t.provider, generation: p?.lastAck?.generation,
                          probes: probes)
        }
        self.notes = allNotes
    }

    /// Pretty-printed JSON with sorted keys.
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try enc.encode(self)
    }

    public static func decode(_ data: Data) throws -> StatusReport {
        try JSONDecoder().decode(StatusReport.self, from: data)
    }

    /// The human-readable form of `status`.
    public func renderTable() -> String {
        var out = "agent pid \(agentPid), listening on \(listen), config \(config), generation \(generation)\n"
        out += "events \(events), drops \(drops), truncated \(truncated), read errors \(readErrors), "
        out += "orphan samples \(orphanSamples), expression errors \(expressionErrors)\n"
        out += "\n"
        if targets.isEmpty {
            out += "no targets\n"
        } else {
            var rows = [["PID", "STATE", "ROLE", "DP", "GEN", "PYTHON", "PROVIDER", "PROBES", "TITLE"]]
            for t in targets {
                let active = t.probes.filter { $0.state == ProbeStateName.active }.count
                rows.append([String(t.pid), t.state.rawValue, t.role.isEmpty ? "-" : t.role, String(t.dp),
                             t.generation.map(String.init) ?? "-", t.python ?? "-", t.provider ?? "-",
                             t.probes.isEmpty ? "-" : "\(active)/\(t.probes.count) active", t.title])
            }
            out += Self.table(rows)
        }
        if !probes.isEmpty {
            out += "\n"
            var rows = [["ID", "HITS", "STATES", "SYMBOL"]]
            for p in probes {
                let states = p.states.isEmpty ? "-" : p.states.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                rows.append([String(p.id), String(p.hits), states, p.symbol])
            }
            out += Self.table(rows)
        }
        if !notes.isEmpty {
            out += "\nnotes:\n"
            for n in notes { out += "  - \(n)\n" }
        }
        return out
    }

    /// Left-aligned columns separated by two spaces; the last column is not padded.
    static func table(_ rows: [[String]]) -> String {
        guard let width = rows.first?.count else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for r in rows { for (i, c) in r.enumerated() where i < width - 1 { widths[i] = max(widths[i], c.count) } }
        var out = ""
        for r in rows {
            var line = ""
            for (i, c) in r.enumerated() {
                line += c
                if i < width - 1 { line += String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        return out
    }
}
