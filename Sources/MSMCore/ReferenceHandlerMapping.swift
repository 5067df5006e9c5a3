/// Entries of a reference-tool config that name one of that tool's own handlers
/// (`handler: ms_service_metric.…:…`). Those handlers ship with the reference tool, not with
/// ms-service-metric, and are never imported; what they recorded is what the built-in config
/// (`Config/default.yaml`) measures for the same symbol. So such an entry becomes:
/// - its own timers and `expr` metrics, kept (without the handler);
/// - the built-in entries of the same symbol, with every metric whose name the user's config
///   does not define itself (the user's definitions win, so names never clash).
/// A symbol the built-in config does not probe keeps its entry unchanged; the provider then
/// reports the probe as `builtin_handler_unavailable` and still records its timers and `expr`
/// metrics.
public enum ReferenceHandlerMapping {
    public static let referencePackage = "ms_service_metric"

    /// Whether `handler` (`module.path:function`) belongs to the reference tool.
    public static func isReferenceHandler(_ handler: String?) -> Bool {
        guard let handler, let module = handler.split(separator: ":", maxSplits: 1).first else { return false }
        return module == referencePackage || module.hasPrefix(referencePackage + ".")
    }

    /// `config` with its reference-handler entries mapped onto `builtIns`, one warning per
    /// mapped entry (`FILE:LINE: handler: …`).
    public static func apply(to config: SymbolConfig, builtIns: SymbolConfig) -> SymbolConfig {
        let builtInSymbols = Set(builtIns.entries.map(\.symbol))
        func isMapped(_ entry: SymbolEntry) -> Bool {
            isReferenceHandler(entry.handler) && builtInSymbols.contains(entry.symbol)
        }
        func ownMetrics(_ entry: SymbolEntry) -> [MetricSpec] {
            // Metrics without expr (other than timers) were recorded by the handler.
            isMapped(entry) ? entry.metrics.filter { $0.type == .timer || $0.expr != nil } : entry.metrics
        }
        let userNames = Set(config.entries.flatMap { ownMetrics($0).map(\.name) })
        var entries: [SymbolEntry] = []
        var warnings = config.warnings
        var mappedSymbols = Set<String>()
        for entry in config.entries {
            guard isMapped(entry), let handler = entry.handler else {
                entries.append(entry)
                continue
            }
            var own = entry
            own.handler = nil
            own.metrics = ownMetrics(entry)
            if !own.metrics.isEmpty { entries.append(own) }
            var names: [String] = []
            if mappedSymbols.insert(entry.symbol).inserted {
                for var builtIn in builtIns.entries where builtIn.symbol == entry.symbol {
                    builtIn.metrics = builtIn.metrics.filter { !userNames.contains($0.name) }
                    builtIn.line = entry.line
                    guard !builtIn.metrics.isEmpty else { continue }
                    names += builtIn.metrics.map(\.name)
                    entries.append(builtIn)
                }
            }
            let what = names.isEmpty ? "nothing more (its metrics are defined by this config)"
                : names.joined(separator: ", ")
            warnings.append("\(config.source):\(entry.line): handler: \(handler) is the reference tool's own; "
                + "mapped to ms-service-metric's built-in metrics of \(entry.symbol): \(what)")
        }
        return SymbolConfig(source: config.source, entries: entries, warnings: warnings)
    }
}
