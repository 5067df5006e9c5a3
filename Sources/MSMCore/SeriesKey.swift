/// One label pair of an exposed series.
public struct Label: Sendable, Hashable, Comparable, Codable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
    public static func < (a: Label, b: Label) -> Bool {
        a.name != b.name ? a.name < b.name : a.value < b.value
    }
}

/// Identity of an exposed series: configured metric name plus all labels, `dp` included,
/// sorted by label name.
public struct SeriesKey: Sendable, Hashable, Comparable {
    public let metric: String
    public let labels: [Label]

    /// `labels` in any order; `dp` replaces any `dp` among them.
    public init(metric: String, labels: [String: String], dp: Int) {
        self.metric = metric
        var l = labels.filter { $0.key != "dp" }.map { Label($0.key, $0.value) }
        l.append(Label("dp", String(dp)))
        l.sort()
        self.labels = l
    }

    public init(metric: String, sortedLabels: [Label]) {
        self.metric = metric
        self.labels = sortedLabels
    }

    public static func < (a: SeriesKey, b: SeriesKey) -> Bool {
        if a.metric != b.metric { return a.metric < b.metric }
        return a.labels.lexicographicallyPrecedes(b.labels)
    }
}
