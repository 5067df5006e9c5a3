/// The validated symbol config: which Python functions to probe and which metrics each
/// one feeds. Built by `ConfigParser`; every value here has passed validation.

/// Metric kinds of the reference format.
public enum MetricType: String, Sendable, Codable, CaseIterable, Hashable {
    /// Histogram of the call duration in seconds (the agent measures it).
    case timer
    /// Monotonic counter; `expr` gives the increment, default 1.
    case counter
    /// Last value per process; needs `expr`.
    case gauge
    /// Histogram of `expr`.
    case histogram

    /// The Prometheus `# TYPE` of the exposed family.
    public var prometheusType: String {
        switch self {
        case .timer, .histogram: return "histogram"
        case .counter: return "counter"
        case .gauge: return "gauge"
        }
    }

    /// Whether the metric is exposed as a histogram (has buckets).
    public var isHistogram: Bool { self == .timer || self == .histogram }
}

/// Default bucket bounds.
public enum DefaultBuckets {
    /// Bounds in seconds the reference tool uses for timers without `buckets`; kept
    /// identical so that existing dashboards and `histogram_quantile` queries keep working.
    public static let timer: [Double] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]
    /// Bounds for `histogram` metrics without `buckets` (sizes and counts: batch sizes,
    /// token counts, queue lengths). Duration-valued histograms should give `buckets`.
    public static let histogram: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]

    public static func forType(_ type: MetricType) -> [Double] {
        switch type {
        case .timer: return timer
        case .histogram: return histogram
        case .counter, .gauge: return []
        }
    }
}

/// One extra label of a metric: its value is a Python expression evaluated by the provider,
/// or (`expr` nil, only in entries with a `handler`) passed by the handler to `ctx.record`.
public struct LabelSpec: Sendable, Equatable, Hashable, Codable {
    public var name: String
    public var expr: String?
    public init(name: String, expr: String?) {
        self.name = name
        self.expr = expr
    }
}

/// One metric fed by a probed symbol.
public struct MetricSpec: Sendable, Equatable {
    /// Configured name, without the `vllm_profiling_` prefix.
    public var name: String
    public var type: MetricType
    public var expr: String?
    /// Bounds as written in the config (nil: the type's default).
    public var buckets: [Double]?
    public var labels: [LabelSpec]
    /// 1-based line of the metric in its file.
    public var line: Int

    public init(name: String, type: MetricType, expr: String? = nil, buckets: [Double]? = nil,
                labels: [LabelSpec] = [], line: Int = 0) {
        self.name = name
        self.type = type
        self.expr = expr
        self.buckets = buckets
        self.labels = labels
        self.line = line
    }

    /// Bounds actually used (empty for counters and gauges).
    public var effectiveBuckets: [Double] { buckets ?? DefaultBuckets.forType(type) }
}

/// What an entry's metrics measure (`scope:` in the config, docs/config.md).
public enum ProbeScope: String, Sendable, Codable, CaseIterable, Hashable {
    /// The call of the function (the default).
    case call
    /// The `with` block guarded by the context manager the function returns: timers measure
    /// `__enter__` to `__exit__`, `ret` is the context manager, `exc` the exception that ended
    /// the block.
    case block
}

/// One entry of the config: a symbol, its optional version range and its metrics.
/// Its index in `SymbolConfig.entries` is the probe id in the control file.
public struct SymbolEntry: Sendable, Equatable {
    /// `module.path:Qualified.name`.
    public var symbol: String
    /// Inclusive bounds against the target's vLLM version, dotted numbers.
    public var minVersion: String?
    public var maxVersion: String?
    public var metrics: [MetricSpec]
    /// `module.path:function` the provider calls after each call (docs/config.md), or nil.
    public var handler: String?
    /// What the metrics measure: the call (default) or the with-block of the returned
    /// context manager.
    public var scope: ProbeScope
    public var line: Int

    public init(symbol: String, minVersion: String? = nil, maxVersion: String? = nil,
                metrics: [MetricSpec], handler: String? = nil, scope: ProbeScope = .call, line: Int = 0) {
        self.symbol = symbol
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.metrics = metrics
        self.handler = handler
        self.scope = scope
        self.line = line
    }

    public var module: String { String(symbol.split(separator: ":", maxSplits: 1).first ?? "") }
    public var qualifiedName: String {
        let parts = symbol.split(separator: ":", maxSplits: 1)
        return parts.count == 2 ? String(parts[1]) : ""
    }
}

/// What the aggregator and renderer need to know about a metric name: the union of all
/// entries that feed it (the parser guarantees they agree on type, buckets and labels).
public struct MetricDefinition: Sendable, Equatable, Hashable {
    public var name: String
    public var type: MetricType
    /// Bounds used for histograms and timers, ascending, without +Inf; empty otherwise.
    public var buckets: [Double]
    /// Configured label names, sorted, without `dp`.
    public var labelNames: [String]
    /// `# HELP` text (unescaped).
    public var help: String
    /// Symbol of the first entry that defines the metric.
    public var symbol: String

    public init(name: String, type: MetricType, buckets: [Double], labelNames: [String],
                help: String, symbol: String) {
        self.name = name
        self.type = type
        self.buckets = buckets
        self.labelNames = labelNames
        self.help = help
        self.symbol = symbol
    }

    /// Whether series of `self` can be kept when the config changes to `other`: same type,
    /// bucket bounds and label names (help and symbol may change).
    public func isCompatible(with other: MetricDefinition) -> Bool {
        name == other.name && type == other.type && buckets == other.buckets && labelNames == other.labelNames
    }

    static func help(name: String, type: MetricType, symbol: String) -> String {
        switch type {
        case .timer: return "Execution duration of \(name)"
        default: return "\(type.rawValue) \(name) from \(symbol)"
        }
    }
}

/// A validated symbol config.
public struct SymbolConfig: Sendable, Equatable {
    /// Where it came from: the path as given, or `<built-in>`.
    public var source: String
    public var entries: [SymbolEntry]
    /// Non-fatal remarks, e.g. ignored label expressions, as `FILE:LINE: FIELD: note`.
    public var warnings: [String]
    /// Every metric name with its definition.
    public private(set) var definitions: [String: MetricDefinition]

    public init(source: String, entries: [SymbolEntry], warnings: [String] = []) {
        self.source = source
        self.entries = entries
        self.warnings = warnings
        var defs: [String: MetricDefinition] = [:]
        for entry in entries {
            for metric in entry.metrics where defs[metric.name] == nil {
                defs[metric.name] = MetricDefinition(
                    name: metric.name, type: metric.type, buckets: metric.effectiveBuckets,
                    labelNames: metric.labels.map(\.name).sorted(),
                    help: MetricDefinition.help(name: metric.name, type: metric.type, symbol: entry.symbol),
                    symbol: entry.symbol)
            }
        }
        self.definitions = defs
    }

    /// Number of entries (= probes).
    public var symbolCount: Int { entries.count }
    /// Number of metric items over all entries.
    public var metricCount: Int { entries.reduce(0) { $0 + $1.metrics.count } }

    /// The `check-config` success line: `FILE: OK (N symbols, M metrics)`.
    public var summary: String { "\(source): OK (\(symbolCount) symbols, \(metricCount) metrics)" }

    /// Symbol of probe `id`, if any.
    public func symbol(forProbe id: Int) -> String? {
        entries.indices.contains(id) ? entries[id].symbol : nil
    }
}

/// Prefix of every exposed metric of the symbol config.
public let exposedMetricPrefix = "vllm_profiling_"
