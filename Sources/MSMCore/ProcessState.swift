/// How a provider's per-process series id maps to storage.
enum SeriesBinding: Equatable {
    case unset
    case slot(Int, MetricType)
    /// The metric is not in the current config.
    case unknownMetric
    /// Labels differ from the configured label names.
    case labelMismatch
    /// Refused by the per-metric series limit.
    case overLimit
}

/// Everything the aggregator knows about one target process. A reference type owned by
/// the aggregator actor only (never shared), so hot-path updates need no dictionary write-back.
final class ProcessState {
    let pid: Int32
    var dp: Int
    var role: String
    var hello: HelloInfo?
    var lastAck: AckReport?
    var byeReason: String?
    /// As announced, to rebuild bindings after a reconfigure or a dp change.
    var registrations: [UInt32: SeriesAnnouncement] = [:]
    /// Series ids below `denseLimit` are looked up by index.
    var dense: [SeriesBinding] = []
    var sparse: [UInt32: SeriesBinding] = [:]
    var probeStates: [Int: ProbeReport] = [:]
    var hits: [UInt64] = []
    var exprErrors: [ExprKey: ExprErrorReport] = [:]
    var samples: UInt64 = 0
    var messages: UInt64 = 0
    /// Series this process created in the store (Aggregator.TargetLimits.series).
    var seriesCreated = 0
    /// Samples with a value for a series id this process never announced (a lost announcement).
    var orphanSamples: UInt64 = 0

    static let denseLimit: UInt32 = 65_536

    struct ExprKey: Hashable {
        var probe: Int
        var metric: String
    }

    init(pid: Int32, dp: Int = -1, role: String = "") {
        self.pid = pid
        self.dp = dp
        self.role = role
    }

    @inline(__always) func binding(_ id: UInt32) -> SeriesBinding {
        if id < ProcessState.denseLimit {
            let i = Int(id)
            return i < dense.count ? dense[i] : .unset
        }
        return sparse[id] ?? .unset
    }

    func setBinding(_ id: UInt32, _ b: SeriesBinding) {
        if id < ProcessState.denseLimit {
            let i = Int(id)
            if i >= dense.count { dense.append(contentsOf: repeatElement(.unset, count: i - dense.count + 1)) }
            dense[i] = b
        } else {
            sparse[id] = b
        }
    }

    /// Every (series id, binding) that points to storage.
    var slotBindings: [(UInt32, Int, MetricType)] {
        var out: [(UInt32, Int, MetricType)] = []
        for (i, b) in dense.enumerated() {
            if case .slot(let s, let t) = b { out.append((UInt32(i), s, t)) }
        }
        for (id, b) in sparse {
            if case .slot(let s, let t) = b { out.append((id, s, t)) }
        }
        return out
    }

    func clearBindings() {
        dense.removeAll(keepingCapacity: true)
        sparse.removeAll()
    }

    @inline(__always) func hit(_ probe: UInt32) {
        let i = Int(probe)
        if i >= hits.count {
            guard i < 1 << 16 else { return }
            hits.append(contentsOf: repeatElement(0, count: i - hits.count + 1))
        }
        hits[i] &+= 1
    }
}
