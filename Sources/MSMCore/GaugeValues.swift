/// The values one gauge series has in each live process that set it. Exposed: the value
/// set most recently (by a sequence number that increases with every set).
struct GaugeValues: Sendable, Equatable {
    struct Entry: Sendable, Equatable {
        var pid: Int32
        var value: Double
        var seq: UInt64
    }
    private(set) var entries: [Entry] = []

    mutating func set(pid: Int32, value: Double, seq: UInt64) {
        for i in entries.indices where entries[i].pid == pid {
            entries[i].value = value
            entries[i].seq = seq
            return
        }
        entries.append(Entry(pid: pid, value: value, seq: seq))
    }

    mutating func add(pid: Int32, delta: Double, seq: UInt64) {
        for i in entries.indices where entries[i].pid == pid {
            entries[i].value += delta
            entries[i].seq = seq
            return
        }
        entries.append(Entry(pid: pid, value: delta, seq: seq))
    }

    mutating func remove(pid: Int32) { entries.removeAll { $0.pid == pid } }

    /// The most recently set value, nil when no live process has set one.
    var current: Double? { entries.max { $0.seq < $1.seq }?.value }
}
