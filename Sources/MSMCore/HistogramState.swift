/// A histogram: per-bucket counts (not cumulative) for `bounds` plus one overflow bucket
/// (+Inf), sum and count.
public struct HistogramState: Sendable, Equatable {
    /// Upper bounds, ascending, without +Inf.
    public private(set) var bounds: [Double]
    /// `bounds.count + 1` counts; the last one is (largest bound, +Inf].
    public private(set) var counts: [UInt64]
    public private(set) var sum: Double = 0
    public private(set) var count: UInt64 = 0

    public init(bounds: [Double]) {
        self.bounds = bounds
        self.counts = [UInt64](repeating: 0, count: bounds.count + 1)
    }

    /// Adds one observation (`le` semantics: v lands in the first bucket with v <= bound).
    public mutating func observe(_ v: Double) {
        var i = 0
        let n = bounds.count
        if n <= 16 {
            while i < n && v > bounds[i] { i += 1 }
        } else {
            var hi = n
            while i < hi {
                let mid = (i + hi) >> 1
                if v > bounds[mid] { i = mid + 1 } else { hi = mid }
            }
        }
        counts[i] &+= 1
        count &+= 1
        sum += v
    }

    /// Cumulative counts per bound, ending with the +Inf bucket (== count).
    public var cumulativeCounts: [UInt64] {
        var out = [UInt64]()
        out.reserveCapacity(counts.count)
        var acc: UInt64 = 0
        for c in counts {
            acc &+= c
            out.append(acc)
        }
        return out
    }
}
