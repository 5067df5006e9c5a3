/// Storage of every exposed series, addressed by slot number. Slots of counters and
/// histograms live until a reconfigure drops their metric; gauge slots are freed when the
/// last process bound to them goes away. Kept as one struct so that hot-path updates
/// mutate arrays in place (no copy-on-write).
struct SeriesStore {
    struct Slot {
        var key: SeriesKey
        var type: MetricType
        var live: Bool = true
        /// Number of (process, series id) bindings pointing here.
        var refs: Int = 0
        /// A counter or histogram is exposed once it has received a value: every process
        /// announces every series of its config, and a series only announced (an engine-core
        /// metric in the API server, dp -1) would otherwise show as a misleading zero.
        var touched = false
        var counter: Double = 0
        var histogram: HistogramState
        var gauge = GaugeValues()
    }

    private(set) var slots: [Slot] = []
    private var index: [SeriesKey: Int] = [:]
    private var free: [Int] = []
    /// Live slots per metric name (for the cardinality cap).
    private(set) var perMetric: [String: Int] = [:]

    var liveCount: Int { index.count }

    func slot(for key: SeriesKey) -> Int? { index[key] }

    func count(of metric: String) -> Int { perMetric[metric] ?? 0 }

    mutating func create(key: SeriesKey, definition: MetricDefinition) -> Int {
        let slot = Slot(key: key, type: definition.type,
                        histogram: HistogramState(bounds: definition.type.isHistogram ? definition.buckets : []))
        let i: Int
        if let f = free.popLast() {
            slots[f] = slot
            i = f
        } else {
            slots.append(slot)
            i = slots.count - 1
        }
        index[key] = i
        perMetric[key.metric, default: 0] += 1
        return i
    }

    mutating func release(_ i: Int) {
        guard slots[i].live else { return }
        slots[i].live = false
        slots[i].histogram = HistogramState(bounds: [])
        slots[i].gauge = GaugeValues()
        index[slots[i].key] = nil
        let m = slots[i].key.metric
        let left = (perMetric[m] ?? 1) - 1
        perMetric[m] = left > 0 ? left : nil
        free.append(i)
    }

    // Hot-path updates; callers pass live slots.
    @inline(__always) mutating func retain(_ i: Int) { slots[i].refs += 1 }
    @inline(__always) mutating func unretain(_ i: Int) { slots[i].refs -= 1 }
    @inline(__always) mutating func observe(_ i: Int, _ v: Double) {
        slots[i].histogram.observe(v)
        slots[i].touched = true
    }
    @inline(__always) mutating func increment(_ i: Int, _ v: Double) {
        slots[i].counter += v
        slots[i].touched = true
    }
    @inline(__always) mutating func setGauge(_ i: Int, pid: Int32, _ v: Double, seq: UInt64) {
        slots[i].gauge.set(pid: pid, value: v, seq: seq)
    }
    @inline(__always) mutating func addGauge(_ i: Int, pid: Int32, _ v: Double, seq: UInt64) {
        slots[i].gauge.add(pid: pid, delta: v, seq: seq)
    }
    mutating func removeGauge(_ i: Int, pid: Int32) { slots[i].gauge.remove(pid: pid) }

    /// Drops every slot whose metric is missing from `definitions` or whose definition is
    /// not compatible with `old`; resets all reference counts (bindings are rebuilt).
    mutating func retainOnly(compatibleWith definitions: [String: MetricDefinition],
                             old: [String: MetricDefinition]) {
        for i in slots.indices where slots[i].live {
            slots[i].refs = 0
            let m = slots[i].key.metric
            guard let n = definitions[m], let o = old[m], o.isCompatible(with: n) else {
                release(i)
                continue
            }
        }
    }

    /// Frees gauge slots no process is bound to.
    mutating func releaseUnreferencedGauges() {
        for i in slots.indices where slots[i].live && slots[i].type == .gauge && slots[i].refs <= 0 {
            release(i)
        }
    }
}
