/// Number formatting for the Prometheus text format.
public enum PrometheusNumber {
    /// Sample values: integers without exponent or fraction where exact (`42`), otherwise
    /// the shortest representation that round-trips (`0.1`, `1e-05`); `+Inf`, `-Inf`, `NaN`.
    public static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v < 0 ? "-Inf" : "+Inf" }
        if v == v.rounded(.towardZero), abs(v) < 9.007_199_254_740_992e15 {
            if v == 0 { return "0" }  // also -0
            return String(Int64(v))
        }
        return v.description
    }

    /// Bucket bounds (`le` label values) the way Python's `prometheus_client` writes them
    /// (`0.005`, `1.0`, `+Inf`), as the reference tool did: dashboards and recording rules
    /// that select `le="1.0"` keep matching.
    public static func formatBound(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v < 0 ? "-Inf" : "+Inf" }
        if v == v.rounded(.towardZero), abs(v) < 1e16 {
            if v == 0 { return "0.0" }
            return String(Int64(v)) + ".0"
        }
        return v.description
    }
}
