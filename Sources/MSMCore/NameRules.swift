/// Lexical rules for names in the symbol config. ASCII only, checked byte by byte.
public enum NameRules {
    @inline(__always) static func isLetterOrUnderscore(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F
    }
    @inline(__always) static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

    /// `[A-Za-z_][A-Za-z0-9_]*` (a Python identifier, ASCII subset).
    public static func isIdentifier<S: StringProtocol>(_ s: S) -> Bool {
        var first = true
        for c in s.utf8 {
            if first {
                guard isLetterOrUnderscore(c) else { return false }
                first = false
            } else if !(isLetterOrUnderscore(c) || isDigit(c)) {
                return false
            }
        }
        return !first
    }

    /// One or more identifiers joined by dots: `vllm.v1.engine.core`, `EngineCore.step`.
    public static func isDottedIdentifier(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return !parts.isEmpty && parts.allSatisfy { isIdentifier($0) }
    }

    /// `module.path:Qualified.name`.
    public static func isSymbol(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count == 2 && isDottedIdentifier(String(parts[0])) && isDottedIdentifier(String(parts[1]))
    }

    /// Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    public static func isMetricName(_ s: String) -> Bool {
        var first = true
        for c in s.utf8 {
            let ok = isLetterOrUnderscore(c) || c == 0x3A || (!first && isDigit(c))
            guard ok else { return false }
            first = false
        }
        return !first
    }

    /// Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
    public static func isLabelName(_ s: String) -> Bool { isIdentifier(s) }

    /// Label names the config may not use: `dp` (added by the agent), `le` (histograms)
    /// and names starting with `__` (reserved by Prometheus).
    public static func reservedLabelReason(_ s: String) -> String? {
        if s == "dp" { return "label \"dp\" is added by the agent and cannot be configured" }
        if s == "le" { return "label \"le\" is reserved for histogram buckets" }
        if s.hasPrefix("__") { return "label names starting with \"__\" are reserved by Prometheus" }
        return nil
    }
}
