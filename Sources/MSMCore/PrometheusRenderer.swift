/// Renders a snapshot as Prometheus text exposition format 0.0.4.
///
/// - Families sorted by name; series sorted by labels; labels sorted by name (`le` last).
/// - Config metrics are exposed as `vllm_profiling_<name>` with colons kept, as the reference
///   tool did, so existing dashboards keep working.
/// - Counters are exposed as `<name>_total` (unless the name already ends in `_total`),
///   exactly as the reference tool's `prometheus_client` wrote them, so dashboards querying
///   `vllm_profiling_rpc_errors_total` keep working. In OpenMetrics the family (`# TYPE`)
///   is the bare name and the sample carries `_total`, as that format requires.
/// - `Format.openMetrics` (chosen by the HTTP layer from `Accept`) ends with `# EOF`.
/// - Timers and histograms: cumulative `_bucket` series ending in `le="+Inf"`, `_sum`, `_count`.
public enum PrometheusRenderer {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"
    public static let openMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    public enum Format: Sendable {
        case text004
        case openMetrics

        /// OpenMetrics when the scraper asks for it (Prometheus does), else text 0.0.4.
        public static func negotiate(accept: String?) -> Format {
            guard let accept, accept.contains("application/openmetrics-text") else { return .text004 }
            return .openMetrics
        }

        public var contentType: String {
            self == .openMetrics ? PrometheusRenderer.openMetricsContentType : PrometheusRenderer.contentType
        }
    }
    public static let selfPrefix = "ms_service_metric_"

    /// Agent-side facts that are not in the aggregator.
    public struct Context: Sendable {
        public var version: String
        /// Number of target processes the agent collects from.
        public var targets: Int
        /// Duration of the previous scrape in seconds (nil before the first one).
        public var previousScrapeDuration: Double?

        public init(version: String = MSMCoreVersion.version, targets: Int = 0, previousScrapeDuration: Double? = nil) {
            self.version = version
            self.targets = targets
            self.previousScrapeDuration = previousScrapeDuration
        }
    }

    public static func render(_ snapshot: AggregatorSnapshot, context: Context = Context(),
                              format: Format = .text004) -> String {
        var out = ""
        out.reserveCapacity(256 + snapshot.seriesCount * 160)
        var families = selfFamilies(snapshot, context)
        families.append(contentsOf: snapshot.families.map { Family.config($0) })
        families.sort { $0.name < $1.name }
        for f in families {
            switch f {
            case .config(let fam): renderConfig(fam, format: format, into: &out)
            case .simple(let s): renderSimple(s, format: format, into: &out)
            }
        }
        if format == .openMetrics { out += "# EOF\n" }
        return out
    }

    /// Counter naming: (family name for HELP/TYPE, sample name).
    static func counterNames(_ name: String, format: Format) -> (family: String, sample: String) {
        let base = name.hasSuffix("_total") ? String(name.dropLast("_total".count)) : name
        return (format == .openMetrics ? base : base + "_total", base + "_total")
    }

    // MARK: - families

    enum Family {
        case config(MetricFamilySnapshot)
        case simple(SimpleFamily)

        var name: String {
            switch self {
            case .config(let f):
                let name = exposedMetricPrefix + f.definition.name
                return f.definition.type == .counter ? counterNames(name, format: .text004).family : name
            case .simple(let s): return s.name
            }
        }
    }

    struct SimpleFamily {
        var name: String
        var type: String
        var help: String
        var samples: [(labels: [Label], value: Double)]
    }

    static func renderConfig(_ fam: MetricFamilySnapshot, format: Format, into out: inout String) {
        var name = exposedMetricPrefix + fam.definition.name
        if fam.definition.type == .counter {
            let names = counterNames(name, format: format)
            header(name: names.family, type: "counter", help: fam.definition.help, format: format, into: &out)
            name = names.sample
        } else {
            header(name: name, type: fam.definition.type.prometheusType, help: fam.definition.help, format: format,
                   into: &out)
        }
        let bounds = fam.definition.buckets.map { PrometheusNumber.formatBound($0) }
        for s in fam.series {
            switch s.value {
            case .counter(let v), .gauge(let v):
                out += name
                labelBlock(s.labels, into: &out)
                out += " "
                out += PrometheusNumber.format(v)
                out += "\n"
            case .histogram(let h):
                // `{a="x",` or `{` : labels open, `le` appended last.
                var open = "{"
                for l in s.labels {
                    open += l.name
                    open += "=\""
                    escapeLabelValue(l.value, into: &open)
                    open += "\","
                }
                let cumulative = h.cumulativeCounts
                let les = h.bounds.count == bounds.count ? bounds : h.bounds.map { PrometheusNumber.formatBound($0) }
                for (i, c) in cumulative.enumerated() {
                    out += name
                    out += "_bucket"
                    out += open
                    out += "le=\""
                    out += i < les.count ? les[i] : "+Inf"
                    out += "\"} "
                    out += String(c)
                    out += "\n"
                }
                out += name
                out += "_sum"
                labelBlock(s.labels, into: &out)
                out += " "
                out += PrometheusNumber.format(h.sum)
                out += "\n"
                out += name
                out += "_count"
                labelBlock(s.labels, into: &out)
                out += " "
                out += String(h.count)
                out += "\n"
            }
        }
    }

    static func renderSimple(_ f: SimpleFamily, format: Format, into out: inout String) {
        var sampleName = f.name
        if f.type == "counter" {
            let names = counterNames(f.name, format: format)
            header(name: names.family, type: f.type, help: f.help, format: format, into: &out)
            sampleName = names.sample
        } else {
            header(name: f.name, type: f.type, help: f.help, format: format, into: &out)
        }
        for s in f.samples {
            out += sampleName
            labelBlock(s.labels, into: &out)
            out += " "
            out += PrometheusNumber.format(s.value)
            out += "\n"
        }
    }

    static func header(name: String, type: String, help: String, format: Format = .text004,
                       into out: inout String) {
        out += "# HELP "
        out += name
        out += " "
        if format == .openMetrics {
            // OpenMetrics escapes double quotes in HELP as well.
            for ch in help.unicodeScalars {
                switch ch {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\"": out += "\\\""
                default: out.unicodeScalars.append(ch)
                }
            }
        } else {
            escapeHelp(help, into: &out)
        }
        out += "\n# TYPE "
        out += name
        out += " "
        out += type
        out += "\n"
    }

    static func labelBlock(_ labels: [Label], into out: inout String) {
        guard !labels.isEmpty else { return }
        out += "{"
        for (i, l) in labels.enumerated() {
            if i > 0 { out += "," }
            out += l.name
            out += "=\""
            escapeLabelValue(l.value, into: &out)
            out += "\""
        }
        out += "}"
    }

    /// HELP text: `\` → `\\`, newline → `\n`.
    public static func escapeHelp(_ s: String, into out: inout String) {
        guard s.utf8.contains(where: { $0 == 0x5C || $0 == 0x0A }) else { out += s; return }
        for ch in s.unicodeScalars {
            switch ch {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(ch)
            }
        }
    }

    /// Label values: `\` → `\\`, `"` → `\"`, newline → `\n`.
    public static func escapeLabelValue(_ s: String, into out: inout String) {
        guard s.utf8.contains(where: { $0 == 0x5C || $0 == 0x0A || $0 == 0x22 }) else { out += s; return }
        for ch in s.unicodeScalars {
            switch ch {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\"": out += "\\\""
            default: out.unicodeScalars.append(ch)
            }
        }
    }

    // MARK: - self metrics

    static func selfFamilies(_ s: AggregatorSnapshot, _ c: Context) -> [Family] {
        func counter(_ name: String, _ help: String, _ v: UInt64) -> Family {
            .simple(SimpleFamily(name: selfPrefix + name, type: "counter", help: help, samples: [([], Double(v))]))
        }
        func gauge(_ name: String, _ help: String, _ v: Double, labels: [Label] = []) -> Family {
            .simple(SimpleFamily(name: selfPrefix + name, type: "gauge", help: help, samples: [(labels, v)]))
        }
        var out: [Family] = [
            gauge("build_info", "Build information of ms-service-metric.", 1, labels: [Label("version", c.version)]),
            counter("events_total", "Ring-buffer events ingested by the agent.", s.stats.events),
            counter("kernel_hits_total", "Marker hits seen by the BPF program.", s.kernel.hits),
            counter("drops_total", "Events lost because the ring buffer was full.", s.kernel.drops),
            counter("truncated_events_total", "Events whose payload exceeded the maximum size (dropped).", s.kernel.truncated),
            counter("read_errors_total", "Payloads the BPF program could not read from the target.", s.kernel.readErrors),
            counter("orphan_samples_total", "Samples referring to series ids that were never announced.", s.stats.orphanSamples),
            counter("expression_errors_total", "Failing metric or label expressions reported by providers.", s.stats.expressionErrors),
            counter("malformed_events_total", "Events the agent could not decode.", s.stats.malformed),
            gauge("targets", "Target processes the agent collects from.", Double(c.targets)),
            gauge("series", "Series currently held by the agent.", Double(s.seriesCount)),
        ]
        if let d = c.previousScrapeDuration {
            out.append(gauge("scrape_duration_seconds", "Time taken to render the previous scrape.", d))
        }
        var probeStates = s.probeStateCounts
        for known in [ProbeStateName.active, ProbeStateName.notFound, ProbeStateName.versionExcluded,
                      ProbeStateName.notPresent, ProbeStateName.error] where probeStates[known] == nil {
            probeStates[known] = 0
        }
        out.append(.simple(SimpleFamily(
            name: selfPrefix + "probes", type: "gauge", help: "(process, probe) pairs per reported probe state.",
            samples: probeStates.sorted { $0.key < $1.key }.map { ([Label("state", $0.key)], Double($0.value)) })))
        out.append(.simple(SimpleFamily(
            name: selfPrefix + "series_dropped_total", type: "counter",
            help: "Series refused because their metric reached the per-metric series limit.",
            samples: s.stats.seriesDropped.sorted { $0.key < $1.key }.map { ([Label("metric", $0.key)], Double($0.value)) })))
        out.append(.simple(SimpleFamily(
            name: selfPrefix + "target_limit_cuts_total", type: "counter",
            help: "Entries a target tried to add past a per-target bound, by table.",
            samples: ["expr_errors", "probe_states", "registrations", "series"].map {
                ([Label("table", $0)], Double(s.stats.limitCuts[$0] ?? 0))
            })))
        out.append(.simple(SimpleFamily(
            name: selfPrefix + "values_dropped_total", type: "counter",
            help: "Sample values not recorded, by reason.",
            samples: s.stats.valuesDropped.sorted { $0.key < $1.key }.map { ([Label("reason", $0.key)], Double($0.value)) })))
        return out
    }
}
