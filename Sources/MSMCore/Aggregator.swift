/// Turns the provider event stream into metric state. One actor; `ingest` processes a batch
/// in order. Counters and histograms are summed over processes and outlive them; gauges are
/// per live process (most recent set wins) and vanish with their process.
public actor Aggregator {
    public static let defaultSeriesLimitPerMetric = 2000

    /// What one target process may make the agent keep: a process is not trusted to stay
    /// small (any process on the node can be a target in watch-all mode, or be compromised),
    /// so each table it grows has a bound, and what goes past it is counted
    /// (`ms_service_metric_target_limit_cuts_total{table}`) and dropped.
    public struct TargetLimits: Sendable {
        /// Series ids announced (each keeps its announcement to rebind after a reconfigure).
        public var registrations = 20_000
        /// Series this process created in the store (shared series it joins do not count).
        public var series = 4_000
        /// Expression-error reports (per probe and metric of the config).
        public var exprErrors = 1_000
        /// Longest detail or message kept from a provider, in characters.
        public var textLength = 1_000
        public init() {}
    }

    private var config: SymbolConfig?
    private var definitions: [String: MetricDefinition] = [:]
    private var store = SeriesStore()
    private var processes: [Int32: ProcessState] = [:]
    private var stats = IngestStats()
    private var kernel = KernelStats()
    /// Hits of exited processes, by probe id.
    private var exitedHits: [UInt64] = []
    private var gaugeSeq: UInt64 = 0
    private let seriesLimit: Int
    private let limits: TargetLimits
    // Cache for runs of samples from the same process.
    private var lastPid: Int32 = -1
    private var lastProcess: ProcessState?

    public init(seriesLimitPerMetric: Int = Aggregator.defaultSeriesLimitPerMetric,
                targetLimits: TargetLimits = TargetLimits()) {
        self.seriesLimit = max(1, seriesLimitPerMetric)
        self.limits = targetLimits
    }

    private func cut(_ table: String) { stats.limitCuts[table, default: 0] &+= 1 }

    private func clipped(_ text: String) -> String {
        text.count <= limits.textLength ? text : String(text.prefix(limits.textLength)) + "…"
    }

    // MARK: - configuration

    /// Installs the config. Equivalent to `reconfigure` when one is already installed.
    public func configure(_ config: SymbolConfig) {
        reconfigure(config)
    }

    /// Switches to `newConfig`: series whose metric keeps its type, buckets and label
    /// names are kept (values included); the others are dropped. Probe hits and states
    /// follow their symbol to its new probe id.
    public func reconfigure(_ newConfig: SymbolConfig) {
        let old = definitions
        let oldConfig = config
        config = newConfig
        definitions = newConfig.definitions
        store.retainOnly(compatibleWith: definitions, old: old)
        for proc in processes.values {
            proc.clearBindings()
            for (id, ann) in proc.registrations { bind(proc, id: id, ann, countRefusal: false) }
        }
        store.releaseUnreferencedGauges()

        // Probe ids are entry indices: move per-probe data along with the symbol.
        let remap = Self.probeRemap(from: oldConfig, to: newConfig)
        exitedHits = Self.remapped(exitedHits, remap, count: newConfig.entries.count)
        for proc in processes.values {
            proc.hits = Self.remapped(proc.hits, remap, count: newConfig.entries.count)
            var states: [Int: ProbeReport] = [:]
            for (old, r) in proc.probeStates {
                if let n = remap[old] { states[n] = ProbeReport(probe: n, state: r.state, detail: r.detail) }
            }
            proc.probeStates = states
        }
    }

    static func probeRemap(from old: SymbolConfig?, to new: SymbolConfig) -> [Int: Int] {
        guard let old else { return [:] }
        var bySymbol: [String: [Int]] = [:]
        for (i, e) in new.entries.enumerated() { bySymbol[e.symbol, default: []].append(i) }
        var out: [Int: Int] = [:]
        for (i, e) in old.entries.enumerated() {
            guard var ids = bySymbol[e.symbol], !ids.isEmpty else { continue }
            out[i] = ids.removeFirst()
            bySymbol[e.symbol] = ids
        }
        return out
    }

    static func remapped(_ hits: [UInt64], _ remap: [Int: Int], count: Int) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: count)
        for (i, h) in hits.enumerated() where h > 0 {
            if let n = remap[i], n < count { out[n] &+= h }
        }
        return out
    }

    /// DP rank (-1: front end) and role of a target process, as the agent determined them.
    /// Series of the process are re-keyed if its rank changes. The process's gauge values
    /// move with it (a one-off snapshot set before the agent learnt the rank, such as the
    /// memory gauges of a worker that sets its title late, must not be lost); what its
    /// counters and histograms recorded before stays under the old rank.
    public func setProcessInfo(pid: Int32, dp: Int, role: String) {
        let proc = process(pid)
        proc.role = role
        guard proc.dp != dp else { return }
        proc.dp = dp
        var gaugeValues: [UInt32: GaugeValues.Entry] = [:]
        for id in proc.registrations.keys {
            if case let .slot(i, .gauge) = proc.binding(id),
               let entry = store.slots[i].gauge.entries.first(where: { $0.pid == pid }) {
                gaugeValues[id] = entry
            }
        }
        unbindAll(proc)
        for (id, ann) in proc.registrations { bind(proc, id: id, ann, countRefusal: false) }
        for (id, entry) in gaugeValues {
            if case let .slot(i, .gauge) = proc.binding(id) { store.setGauge(i, pid: pid, entry.value, seq: entry.seq) }
        }
    }

    /// Forgets a process: its tables, its gauges. Its counters and histograms stay.
    public func processExited(pid: Int32) {
        guard let proc = processes.removeValue(forKey: pid) else { return }
        if lastPid == pid {
            lastPid = -1
            lastProcess = nil
        }
        unbindAll(proc)
        if exitedHits.count < proc.hits.count {
            exitedHits.append(contentsOf: repeatElement(0, count: proc.hits.count - exitedHits.count))
        }
        for (i, h) in proc.hits.enumerated() { exitedHits[i] &+= h }
    }

    /// Kernel-side counters (absolute values).
    public func setKernelStats(hits: UInt64, drops: UInt64, truncated: UInt64, readErrors: UInt64) {
        kernel = KernelStats(hits: hits, drops: drops, truncated: truncated, readErrors: readErrors)
    }

    // MARK: - ingest

    /// Applies a batch of events in order.
    public func ingest(_ batch: [ProviderEvent]) {
        stats.events &+= UInt64(batch.count)
        for event in batch {
            switch event {
            case .sample(let s):
                apply(s)
            case let .message(pid, _, _, msg):
                apply(msg, pid: pid)
            case .malformed(let reason):
                stats.malformed &+= 1
                stats.malformedByReason[reason.label, default: 0] &+= 1
            }
        }
    }

    /// Convenience: one event.
    public func ingest(_ event: ProviderEvent) { ingest([event]) }

    @inline(__always) private func process(_ pid: Int32) -> ProcessState {
        if pid == lastPid, let p = lastProcess { return p }
        let p: ProcessState
        if let existing = processes[pid] {
            p = existing
        } else {
            p = ProcessState(pid: pid)
            processes[pid] = p
        }
        lastPid = pid
        lastProcess = p
        return p
    }

    private func apply(_ s: Sample) {
        stats.samples &+= 1
        let proc = process(s.pid)
        proc.samples &+= 1
        if s.startNs != 0 {
            if Int(s.probeId) < (config?.entries.count ?? 0) {
                proc.hit(s.probeId)
            } else {
                stats.unknownProbeSamples &+= 1
            }
        }
        var orphan = false
        for v in s.values {
            switch proc.binding(v.seriesId) {
            case let .slot(i, type):
                record(v, slot: i, type: type, sample: s)
            case .unset:
                orphan = true
            case .unknownMetric:
                drop("unknown_metric")
            case .labelMismatch:
                drop("label_mismatch")
            case .overLimit:
                drop("series_limit")
            }
        }
        if orphan {
            stats.orphanSamples &+= 1
            proc.orphanSamples &+= 1
        }
    }

    @inline(__always) private func record(_ v: SampleValue, slot i: Int, type: MetricType, sample s: Sample) {
        switch (type, v.op) {
        case (.timer, SampleOp.observeDuration), (.histogram, SampleOp.observeDuration):
            guard let d = s.durationSeconds else { return drop("bad_duration") }
            store.observe(i, d)
        case (.timer, SampleOp.observe), (.histogram, SampleOp.observe):
            guard v.value.isFinite else { return drop("non_finite") }
            store.observe(i, v.value)
        case (.counter, SampleOp.inc):
            guard v.value.isFinite else { return drop("non_finite") }
            guard v.value >= 0 else { return drop("negative_increment") }
            store.increment(i, v.value)
        case (.gauge, SampleOp.set):
            gaugeSeq &+= 1
            store.setGauge(i, pid: s.pid, v.value, seq: gaugeSeq)
        case (.gauge, SampleOp.inc):
            gaugeSeq &+= 1
            store.addGauge(i, pid: s.pid, v.value, seq: gaugeSeq)
        default:
            drop("op_mismatch")
        }
    }

    private func drop(_ reason: String) { stats.valuesDropped[reason, default: 0] &+= 1 }

    private func apply(_ msg: ProviderMessage, pid: Int32) {
        stats.messages &+= 1
        let proc = process(pid)
        proc.messages &+= 1
        switch msg {
        case .hello(let h):
            proc.hello = h
            proc.byeReason = nil
        case .series(let ann):
            if let old = proc.registrations[ann.id], old == ann, proc.binding(ann.id) != .unset { return }
            if proc.registrations[ann.id] == nil, proc.registrations.count >= limits.registrations {
                return cut("registrations")
            }
            unbind(proc, id: ann.id)
            proc.registrations[ann.id] = ann
            bind(proc, id: ann.id, ann, countRefusal: true)
        case .probe(let r):
            // Only probes of the config, only the states the protocol defines.
            guard r.probe >= 0, r.probe < (config?.entries.count ?? 0) else { return cut("probe_states") }
            let state = ProbeStateName.all.contains(r.state) ? r.state : ProbeStateName.error
            let detail = state == r.state ? r.detail : "unknown probe state \"\(r.state.prefix(40))\": \(r.detail)"
            proc.probeStates[r.probe] = ProbeReport(probe: r.probe, state: state, detail: clipped(detail))
        case .exprError(var e):
            let key = ProcessState.ExprKey(probe: e.probe, metric: e.metric)
            guard proc.exprErrors[key] != nil
                    || (e.probe >= 0 && e.probe < (config?.entries.count ?? 0) && proc.exprErrors.count < limits.exprErrors)
            else { return cut("expr_errors") }
            e.message = clipped(e.message)
            let before = proc.exprErrors[key]?.count ?? 0
            // Cumulative per process; a smaller count means the provider started over.
            stats.expressionErrors &+= e.count >= before ? e.count - before : e.count
            proc.exprErrors[key] = e
        case .ack(let a):
            proc.lastAck = a
        case .bye(let reason):
            proc.byeReason = reason
            proc.probeStates.removeAll()
        case .unknown:
            break
        }
    }

    // MARK: - bindings

    private func bind(_ proc: ProcessState, id: UInt32, _ ann: SeriesAnnouncement, countRefusal: Bool) {
        guard let def = definitions[ann.metric] else {
            proc.setBinding(id, .unknownMetric)
            return
        }
        let names = ann.labels.keys.filter { $0 != "dp" }.sorted()
        guard names == def.labelNames else {
            proc.setBinding(id, .labelMismatch)
            return
        }
        let key = SeriesKey(metric: ann.metric, labels: ann.labels, dp: proc.dp)
        let slot: Int
        if let s = store.slot(for: key) {
            slot = s
        } else if store.count(of: ann.metric) >= seriesLimit {
            if countRefusal { stats.seriesDropped[ann.metric, default: 0] &+= 1 }
            proc.setBinding(id, .overLimit)
            return
        } else if proc.seriesCreated >= limits.series {
            if countRefusal { cut("series") }
            proc.setBinding(id, .overLimit)
            return
        } else {
            slot = store.create(key: key, definition: def)
            proc.seriesCreated += 1
        }
        store.retain(slot)
        proc.setBinding(id, .slot(slot, def.type))
    }

    private func unbind(_ proc: ProcessState, id: UInt32) {
        guard case let .slot(i, type) = proc.binding(id) else {
            proc.setBinding(id, .unset)
            return
        }
        proc.setBinding(id, .unset)
        store.unretain(i)
        if type == .gauge {
            // The process may bind the same gauge through another id; keep its value then.
            if !proc.slotBindings.contains(where: { $0.1 == i }) { store.removeGauge(i, pid: proc.pid) }
            if store.slots[i].refs <= 0 { store.release(i) }
        }
    }

    /// Drops every binding of `proc` (exit, dp change) and its gauge values.
    private func unbindAll(_ proc: ProcessState) {
        var gauges: Set<Int> = []
        for (_, i, type) in proc.slotBindings {
            store.unretain(i)
            if type == .gauge { gauges.insert(i) }
        }
        proc.clearBindings()
        for i in gauges {
            store.removeGauge(i, pid: proc.pid)
            if store.slots[i].refs <= 0 { store.release(i) }
        }
    }

    // MARK: - queries

    /// Last control-file generation each live process acknowledged (processes that have
    /// not acknowledged any are absent). Cheap: for polling while waiting for acks.
    /// Per process: its orphan samples so far and the pid it reports for itself (its own pid
    /// namespace; nil before its hello), for asking a provider to announce its series again.
    public func orphans() -> [Int32: (count: UInt64, selfPid: Int32?)] {
        var out: [Int32: (count: UInt64, selfPid: Int32?)] = [:]
        for (pid, p) in processes where p.orphanSamples > 0 { out[pid] = (p.orphanSamples, p.hello?.pid) }
        return out
    }

    public func acknowledgedGenerations() -> [Int32: UInt64] {
        var out: [Int32: UInt64] = [:]
        for (pid, p) in processes { if let a = p.lastAck { out[pid] = a.generation } }
        return out
    }

    // MARK: - snapshot

    /// Orders label lists by (name, value) pairs comparing UTF-8 bytes (stable, and much
    /// cheaper than Unicode-aware String comparison for 10k-series snapshots).
    static func labelsPrecede(_ a: [Label], _ b: [Label]) -> Bool {
        for i in 0..<min(a.count, b.count) {
            if a[i].name != b[i].name { return a[i].name.utf8.lexicographicallyPrecedes(b[i].name.utf8) }
            if a[i].value != b[i].value { return a[i].value.utf8.lexicographicallyPrecedes(b[i].value.utf8) }
        }
        return a.count < b.count
    }

    /// A consistent copy of everything the renderer and `status` need.
    public func snapshot() -> AggregatorSnapshot {
        var byMetric: [String: [SeriesSnapshot]] = [:]
        for slot in store.slots where slot.live && (slot.touched || slot.type == .gauge) {
            let value: SeriesValue
            switch slot.type {
            case .counter: value = .counter(slot.counter)
            case .timer, .histogram: value = .histogram(slot.histogram)
            case .gauge:
                guard let g = slot.gauge.current else { continue }
                value = .gauge(g)
            }
            byMetric[slot.key.metric, default: []].append(SeriesSnapshot(labels: slot.key.labels, value: value))
        }
        var families: [MetricFamilySnapshot] = []
        families.reserveCapacity(byMetric.count)
        for (name, var series) in byMetric {
            guard let def = definitions[name] else { continue }
            series.sort { Self.labelsPrecede($0.labels, $1.labels) }
            families.append(MetricFamilySnapshot(definition: def, series: series))
        }
        families.sort { $0.definition.name < $1.definition.name }

        let entries = config?.entries ?? []
        var probes = entries.enumerated().map {
            ProbeSummary(id: $0.offset, symbol: $0.element.symbol,
                         hits: $0.offset < exitedHits.count ? exitedHits[$0.offset] : 0, states: [:])
        }
        var stateCounts: [String: Int] = [:]
        var procs: [ProcessSnapshot] = []
        for proc in processes.values {
            for (i, h) in proc.hits.enumerated() where i < probes.count { probes[i].hits &+= h }
            for (id, r) in proc.probeStates {
                stateCounts[r.state, default: 0] += 1
                if id >= 0 && id < probes.count { probes[id].states[r.state, default: 0] += 1 }
            }
            procs.append(ProcessSnapshot(
                pid: proc.pid, dp: proc.dp, role: proc.role, hello: proc.hello, lastAck: proc.lastAck,
                byeReason: proc.byeReason,
                probeStates: proc.probeStates.values.sorted { $0.probe < $1.probe },
                hits: proc.hits,
                exprErrors: proc.exprErrors.values.sorted { ($0.probe, $0.metric) < ($1.probe, $1.metric) },
                seriesRegistered: proc.registrations.count, samples: proc.samples, messages: proc.messages))
        }
        procs.sort { $0.pid < $1.pid }
        return AggregatorSnapshot(families: families, stats: stats, kernel: kernel, probes: probes,
                                  processes: procs, probeStateCounts: stateCounts,
                                  seriesCount: store.liveCount, seriesLimitPerMetric: seriesLimit,
                                  configSource: config?.source)
    }
}
