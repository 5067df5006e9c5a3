/// A dotted numeric version such as `0.9.1`, compared component by component with
/// missing components as 0 (`0.9` == `0.9.0`).
public struct VersionString: Sendable, Comparable, Hashable, CustomStringConvertible {
    public let components: [Int]
    public let description: String

    /// nil unless `text` is one or more decimal numbers separated by dots.
    public init?(_ text: String) {
        var comps: [Int] = []
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.utf8.count <= 9, part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let n = Int(part) else { return nil }
            comps.append(n)
        }
        guard !comps.isEmpty else { return nil }
        components = comps
        description = text
    }

    public static func < (a: VersionString, b: VersionString) -> Bool {
        let n = max(a.components.count, b.components.count)
        for i in 0..<n {
            let x = i < a.components.count ? a.components[i] : 0
            let y = i < b.components.count ? b.components[i] : 0
            if x != y { return x < y }
        }
        return false
    }

    public static func == (a: VersionString, b: VersionString) -> Bool { !(a < b) && !(b < a) }

    public func hash(into hasher: inout Hasher) {
        var c = components
        while c.count > 1, c.last == 0 { c.removeLast() }
        hasher.combine(c)
    }
}
