/// Kernel-side counters (sums of the BPF program's per-CPU stats), set by the agent.
public struct KernelStats: Sendable, Equatable, Codable {
    public var hits: UInt64 = 0
    public var drops: UInt64 = 0
    public var truncated: UInt64 = 0
    public var readErrors: UInt64 = 0
    public init(hits: UInt64 = 0, drops: UInt64 = 0, truncated: UInt64 = 0, readErrors: UInt64 = 0) {
        self.hits = hits
        self.drops = drops
        self.truncated = truncated
        self.readErrors = readErrors
    }
}

/// Value of one exposed series.
public enum SeriesValue: Sendable, Equatable {
    case counter(Double)
    case gauge(Double)
    case histogram(HistogramState)
}

public struct SeriesSnapshot: Sendable, Equatable {
    /// Sorted by name, `dp` included.
    public var labels: [Label]
    public var value: SeriesValue
    public init(labels: [Label], value: SeriesValue) {
        self.labels = labels
        self.value = value
    }
}

/// One metric family: its definition and its series sorted by labels.
public struct MetricFamilySnapshot: Sendable, Equatable {
    public var definition: MetricDefinition
    public var series: [SeriesSnapshot]
    public init(definition: MetricDefinition, series: [SeriesSnapshot]) {
        self.definition = definition
        self.series = series
    }
}

/// One probe (config entry) over all processes.
public struct ProbeSummary: Sendable, Equatable {
    public var id: Int
    public var symbol: String
    /// Calls seen, processes that exited included.
    public var hits: UInt64
    /// Live processes per reported state.
    public var states: [String: Int]
}

/// What the aggregator knows about one live process.
public struct ProcessSnapshot: Sendable, Equatable {
    public var pid: Int32
    public var dp: Int
    public var role: String
    public var hello: HelloInfo?
    public var lastAck: AckReport?
    public var byeReason: String?
    /// Sorted by probe id.
    public var probeStates: [ProbeReport]
    /// Calls per probe id (index).
    public var hits: [UInt64]
    /// Sorted by probe id, then metric.
    public var exprErrors: [ExprErrorReport]
    public var seriesRegistered: Int
    public var samples: UInt64
    public var messages: UInt64

    public func hits(probe: Int) -> UInt64 { hits.indices.contains(probe) ? hits[probe] : 0 }
    public func state(probe: Int) -> ProbeReport? { probeStates.first { $0.probe == probe } }
}

/// Ingest counters.
public struct IngestStats: Sendable, Equatable {
    /// Records handed to `ingest`, malformed ones included.
    public var events: UInt64 = 0
    public var samples: UInt64 = 0
    public var messages: UInt64 = 0
    public var malformed: UInt64 = 0
    public var malformedByReason: [String: UInt64] = [:]
    /// Samples with at least one value for a series id the process never announced.
    public var orphanSamples: UInt64 = 0
    /// Failing expressions reported by providers (cumulative, exited processes included).
    public var expressionErrors: UInt64 = 0
    /// Values not recorded, by reason (unknown_metric, label_mismatch, series_limit,
    /// op_mismatch, bad_duration, non_finite, negative_increment).
    public var valuesDropped: [String: UInt64] = [:]
    /// Series registrations refused by the per-metric limit, by metric name.
    public var seriesDropped: [String: UInt64] = [:]
    /// Samples whose probe id is not in the current config.
    public var unknownProbeSamples: UInt64 = 0
    /// Entries a target tried to add past a per-target bound, by table (see
    /// Aggregator.TargetLimits): registrations, series, probe_states, expr_errors.
    public var limitCuts: [String: UInt64] = [:]
}

/// Everything the renderer and `status` need, taken at one point in time.
public struct AggregatorSnapshot: Sendable {
    /// Families with at least one series, sorted by name.
    public var families: [MetricFamilySnapshot]
    public var stats: IngestStats
    public var kernel: KernelStats
    /// One per config entry, by id.
    public var probes: [ProbeSummary]
    /// Live processes by pid.
    public var processes: [ProcessSnapshot]
    /// (process, probe) pairs per reported state, over live processes.
    public var probeStateCounts: [String: Int]
    public var seriesCount: Int
    public var seriesLimitPerMetric: Int
    /// Source of the config in force (path or `<built-in>`), nil before `configure`.
    public var configSource: String?

    public func process(_ pid: Int32) -> ProcessSnapshot? { processes.first { $0.pid == pid } }
}
