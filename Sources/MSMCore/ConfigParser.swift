import Foundation
import Yams

/// Parses and validates a symbol config in the reference format: a YAML sequence of
///
///     - symbol: module.path:Qualified.name
///       min_version: "0.9.1"      # optional, inclusive
///       max_version: "0.11.0"     # optional, inclusive
///       metrics:
///         - name: scheduler:duration
///           type: timer            # timer | counter | gauge | histogram
///           expr: ...              # histogram/gauge: required; counter: optional; timer: none
///           buckets: [...]         # timer/histogram only, ascending, finite
///           labels: [{name: ..., expr: ...}]
///       handler: pkg.module:function   # optional, see docs/config.md
///       scope: block              # optional: call (default) | block (the returned context
///                                 # manager's with-block, see docs/config.md)
///
/// In an entry with a `handler`, metrics without `expr` (other than timers) are recorded by
/// the handler through `ctx.record`, and their labels are given without `expr`.
///
/// Works on the node tree (`Yams.compose`) so that every error names its line. All errors
/// are collected; the result is either a config without errors or the full list.
public enum ConfigParser {
    static let entryKeys = ["symbol", "min_version", "max_version", "metrics", "handler", "scope"]
    static let metricKeys = ["name", "type", "expr", "buckets", "labels"]
    static let labelKeys = ["name", "expr"]

    /// Parses `yaml`; `file` is used in messages (a path, or `<built-in>`).
    public static func parse(yaml: String, file: String) throws(ConfigErrorList) -> SymbolConfig {
        var ctx = Context(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigErrorList([yamlError(error, file: file)])
        }
        guard let root else {
            throw ConfigErrorList([ConfigError(file: file, line: 1, field: "config",
                                               message: "empty config: expected a list of symbol entries")])
        }
        guard case .sequence(let seq) = root else {
            ctx.error(root, "config", "expected a list of symbol entries (- symbol: ...), found \(describe(root))")
            throw ConfigErrorList(ctx.errors)
        }
        var entries: [SymbolEntry] = []
        for (i, node) in seq.enumerated() {
            if let entry = parseEntry(node, index: i, ctx: &ctx) { entries.append(entry) }
        }
        checkConsistency(entries, ctx: &ctx)
        guard ctx.errors.isEmpty else {
            throw ConfigErrorList(ctx.errors.sorted { $0.line < $1.line })
        }
        return SymbolConfig(source: file, entries: entries, warnings: ctx.warnings)
    }

    /// Reads and parses the file at `path` (errors name the path as given).
    public static func load(path: String) throws(ConfigErrorList) -> SymbolConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigErrorList([ConfigError(file: path, line: 0, field: "config",
                                               message: "cannot read file: \(readProblem(path))")])
        }
        return try parse(yaml: text, file: path)
    }

    // MARK: - context

    struct Context {
        let file: String
        var errors: [ConfigError] = []
        var warnings: [String] = []

        mutating func error(_ node: Node?, _ field: String, _ message: String, line: Int? = nil) {
            errors.append(ConfigError(file: file, line: line ?? node?.mark?.line ?? 0, field: field, message: message))
        }
        mutating func warn(_ node: Node, _ field: String, _ message: String) {
            warnings.append("\(file):\(node.mark?.line ?? 0): \(field): \(message)")
        }
    }

    // MARK: - entries

    static func parseEntry(_ node: Node, index: Int, ctx: inout Context) -> SymbolEntry? {
        guard case .mapping(let map) = node else {
            ctx.error(node, "entry[\(index)]", "expected a mapping with symbol and metrics, found \(describe(node))")
            return nil
        }
        let errorsBefore = ctx.errors.count
        var symbol: String?
        var minVersion: (String, Node)?
        var maxVersion: (String, Node)?
        var metrics: [MetricSpec]?
        var metricsNode: Node?
        var handler: String?
        var scope = ProbeScope.call
        let hasHandler = map["handler"] != nil
        for (keyNode, value) in map {
            guard let key = keyString(keyNode, path: "", ctx: &ctx) else { continue }
            switch key {
            case "symbol":
                guard let s = requiredString(value, "symbol", ctx: &ctx) else { continue }
                if NameRules.isSymbol(s) {
                    symbol = s
                } else {
                    ctx.error(value, "symbol", "invalid symbol \(quoted(s)) (expected module.path:Qualified.name, both parts dotted Python identifiers)")
                }
            case "min_version", "max_version":
                guard !isNull(value), let s = requiredString(value, key, ctx: &ctx) else { continue }
                guard VersionString(s) != nil else {
                    ctx.error(value, key, "invalid version \(quoted(s)) (expected dotted numbers such as \"0.9.1\")")
                    continue
                }
                if key == "min_version" { minVersion = (s, value) } else { maxVersion = (s, value) }
            case "metrics":
                metricsNode = value
                metrics = parseMetrics(value, hasHandler: hasHandler, ctx: &ctx)
            case "handler":
                guard let s = requiredString(value, "handler", ctx: &ctx) else { continue }
                if NameRules.isSymbol(s) {
                    handler = s
                } else {
                    ctx.error(value, "handler", "invalid handler \(quoted(s)) (expected module.path:function, both parts dotted Python identifiers, e.g. mypkg.metrics:on_schedule)")
                }
            case "scope":
                guard let s = requiredString(value, "scope", ctx: &ctx) else { continue }
                if let v = ProbeScope(rawValue: s) {
                    scope = v
                } else {
                    ctx.error(value, "scope", "unknown scope \(quoted(s)) (expected call: time the call, or block: time the with-block of the context manager the function returns)")
                }
            default:
                ctx.error(keyNode, key, "unknown key \(quoted(key)) (expected \(entryKeys.joined(separator: ", ")))")
            }
        }
        if map["symbol"] == nil { ctx.error(node, "symbol", "required key missing") }
        if metricsNode == nil {
            ctx.error(node, "metrics", "required key missing (each symbol needs at least one metric)")
        }
        if let (lo, loNode) = minVersion, let (hi, _) = maxVersion,
           let a = VersionString(lo), let b = VersionString(hi), b < a {
            ctx.error(loNode, "min_version", "min_version \(quoted(lo)) is greater than max_version \(quoted(hi))")
        }
        guard ctx.errors.count == errorsBefore, let symbol, let metrics else { return nil }
        return SymbolEntry(symbol: symbol, minVersion: minVersion?.0, maxVersion: maxVersion?.0,
                           metrics: metrics, handler: handler, scope: scope, line: node.mark?.line ?? 0)
    }

    static func parseMetrics(_ node: Node, hasHandler: Bool, ctx: inout Context) -> [MetricSpec]? {
        guard case .sequence(let seq) = node else {
            ctx.error(node, "metrics", "expected a list of metrics, found \(describe(node))")
            return nil
        }
        if seq.isEmpty {
            ctx.error(node, "metrics", "must list at least one metric")
            return nil
        }
        var out: [MetricSpec] = []
        var ok = true
        var seen: [String: Int] = [:]
        for (i, item) in seq.enumerated() {
            let path = "metrics[\(i)]"
            guard let m = parseMetric(item, path: path, hasHandler: hasHandler, ctx: &ctx) else { ok = false; continue }
            if let line = seen[m.name] {
                ctx.error(item, "\(path).name", "metric \(quoted(m.name)) is listed twice for this symbol (also at line \(line))", line: m.line)
                ok = false
                continue
            }
            seen[m.name] = m.line
            out.append(m)
        }
        return ok ? out : nil
    }

    /// `hasHandler`: the entry names a handler, so `expr` is optional and a metric without
    /// one (not a timer) is recorded by the handler, with labels given by name only.
    static func parseMetric(_ node: Node, path: String, hasHandler: Bool, ctx: inout Context) -> MetricSpec? {
        guard case .mapping(let map) = node else {
            ctx.error(node, path, "expected a mapping with name and type, found \(describe(node))")
            return nil
        }
        let errorsBefore = ctx.errors.count
        var name: String?
        var type: MetricType?
        var expr: (String, Node)?
        var buckets: ([Double], Node)?
        var labels: ([(LabelSpec, Node)], Node)?
        for (keyNode, value) in map {
            guard let key = keyString(keyNode, path: path + ".", ctx: &ctx) else { continue }
            let field = "\(path).\(key)"
            switch key {
            case "name":
                guard let s = requiredString(value, field, ctx: &ctx) else { continue }
                if NameRules.isMetricName(exposedMetricPrefix + s) {
                    name = s
                } else {
                    ctx.error(value, field, "invalid metric name \(quoted(s)) (\(exposedMetricPrefix)NAME must match [a-zA-Z_:][a-zA-Z0-9_:]*)")
                }
            case "type":
                guard let s = requiredString(value, field, ctx: &ctx) else { continue }
                if let t = MetricType(rawValue: s) {
                    type = t
                } else {
                    let all = MetricType.allCases.map(\.rawValue).joined(separator: ", ")
                    ctx.error(value, field, "unknown type \(quoted(s)) (expected \(all))")
                }
            case "expr":
                guard !isNull(value), let s = requiredString(value, field, ctx: &ctx) else { continue }
                expr = (s, value)
            case "buckets":
                if let b = parseBuckets(value, field: field, ctx: &ctx) { buckets = (b, value) }
            case "labels":
                if let l = parseLabels(value, field: field, exprOptional: hasHandler, ctx: &ctx) { labels = (l, value) }
            default:
                ctx.error(keyNode, field, "unknown key \(quoted(key)) (expected \(metricKeys.joined(separator: ", ")))")
            }
        }
        if map["name"] == nil { ctx.error(node, "\(path).name", "required key missing") }
        if map["type"] == nil { ctx.error(node, "\(path).type", "required key missing") }
        if let type {
            switch type {
            case .timer:
                if let (_, n) = expr {
                    ctx.error(n, "\(path).expr", "a timer measures the call duration and takes no expr (use type histogram for a value)")
                }
            case .histogram, .gauge:
                if hasHandler {
                    break  // without expr: recorded by the handler
                } else if expr == nil && map["expr"] == nil {
                    ctx.error(node, "\(path).expr", "required for type \(type.rawValue)")
                } else if expr == nil, let n = map["expr"], isNull(n) {
                    ctx.error(n, "\(path).expr", "required for type \(type.rawValue)")
                }
            case .counter:
                break
            }
            if let (_, n) = buckets, !type.isHistogram {
                ctx.error(n, "\(path).buckets", "only timer and histogram metrics take buckets")
            }
        }
        var labelSpecs = labels?.0.map(\.0) ?? []
        if hasHandler, let type, let name {
            let byHandler = type != .timer && expr == nil
            for (i, (label, labelNode)) in (labels?.0 ?? []).enumerated() {
                if byHandler, label.expr != nil {
                    ctx.warn(labelNode, "\(path).labels[\(i)].expr", "ignored: metric \(quoted(name)) has no expr, so the handler records it and passes the label values to ctx.record")
                    labelSpecs[i].expr = nil
                } else if !byHandler, label.expr == nil {
                    ctx.error(labelNode, "\(path).labels[\(i)].expr", "required key missing: metric \(quoted(name)) is recorded automatically (\(type == .timer ? "a timer" : "it has an expr")); only metrics the handler records (no expr, not a timer) take labels without expr")
                }
            }
        }
        guard ctx.errors.count == errorsBefore, let name, let type else { return nil }
        return MetricSpec(name: name, type: type, expr: expr?.0, buckets: buckets?.0,
                          labels: labelSpecs, line: node.mark?.line ?? 0)
    }

    static func parseBuckets(_ node: Node, field: String, ctx: inout Context) -> [Double]? {
        guard case .sequence(let seq) = node else {
            ctx.error(node, field, "expected a list of numbers, found \(describe(node))")
            return nil
        }
        if seq.isEmpty {
            ctx.error(node, field, "must list at least one bound")
            return nil
        }
        var out: [Double] = []
        for (i, item) in seq.enumerated() {
            guard case .scalar(let s) = item, let v = number(s) else {
                ctx.error(item, "\(field)[\(i)]", "expected a number, found \(describe(item))")
                return nil
            }
            guard v.isFinite else {
                ctx.error(item, "\(field)[\(i)]", "bounds must be finite (+Inf is added automatically)")
                return nil
            }
            if let last = out.last, v <= last {
                ctx.error(item, "\(field)[\(i)]", "bounds must be strictly ascending (\(s.string) after \(formatBound(last)))")
                return nil
            }
            out.append(v)
        }
        return out
    }

    /// Labels with their nodes; `exprOptional`: a label may be given by name only (handler entries).
    static func parseLabels(_ node: Node, field: String, exprOptional: Bool,
                            ctx: inout Context) -> [(LabelSpec, Node)]? {
        guard case .sequence(let seq) = node else {
            ctx.error(node, field, "expected a list of {name, expr}, found \(describe(node))")
            return nil
        }
        var out: [(LabelSpec, Node)] = []
        var ok = true
        var seen: Set<String> = []
        for (i, item) in seq.enumerated() {
            let path = "\(field)[\(i)]"
            guard case .mapping(let map) = item else {
                ctx.error(item, path, "expected a mapping with name and expr, found \(describe(item))")
                ok = false
                continue
            }
            var name: String?
            var expr: String?
            var itemOK = true
            for (keyNode, value) in map {
                guard let key = keyString(keyNode, path: path + ".", ctx: &ctx) else { itemOK = false; continue }
                switch key {
                case "name":
                    guard let s = requiredString(value, "\(path).name", ctx: &ctx) else { itemOK = false; continue }
                    if !NameRules.isLabelName(s) {
                        ctx.error(value, "\(path).name", "invalid label name \(quoted(s)) (must match [a-zA-Z_][a-zA-Z0-9_]*)")
                        itemOK = false
                    } else if let reason = NameRules.reservedLabelReason(s) {
                        ctx.error(value, "\(path).name", reason)
                        itemOK = false
                    } else if !seen.insert(s).inserted {
                        ctx.error(value, "\(path).name", "duplicate label \(quoted(s))")
                        itemOK = false
                    } else {
                        name = s
                    }
                case "expr":
                    if exprOptional && isNull(value) { continue }
                    guard let s = requiredString(value, "\(path).expr", ctx: &ctx) else { itemOK = false; continue }
                    expr = s
                default:
                    ctx.error(keyNode, "\(path).\(key)", "unknown key \(quoted(key)) (expected \(labelKeys.joined(separator: ", ")))")
                    itemOK = false
                }
            }
            if map["name"] == nil { ctx.error(item, "\(path).name", "required key missing"); itemOK = false }
            if map["expr"] == nil && !exprOptional {
                ctx.error(item, "\(path).expr", "required key missing")
                itemOK = false
            }
            if itemOK, let name { out.append((LabelSpec(name: name, expr: expr), item)) } else { ok = false }
        }
        return ok ? out : nil
    }

    /// A metric name must mean the same thing everywhere in the file, and a histogram's
    /// `_bucket`/`_sum`/`_count` series must not collide with another metric.
    static func checkConsistency(_ entries: [SymbolEntry], ctx: inout Context) {
        var first: [String: (MetricSpec, String)] = [:]
        for entry in entries {
            for (i, m) in entry.metrics.enumerated() {
                guard let (prev, prevSymbol) = first[m.name] else {
                    first[m.name] = (m, entry.symbol)
                    continue
                }
                var diffs: [String] = []
                if prev.type != m.type { diffs.append("type \(m.type.rawValue) vs \(prev.type.rawValue)") }
                else if prev.effectiveBuckets != m.effectiveBuckets { diffs.append("different buckets") }
                let a = Set(prev.labels.map(\.name)), b = Set(m.labels.map(\.name))
                if a != b {
                    diffs.append("labels [\(b.sorted().joined(separator: ", "))] vs [\(a.sorted().joined(separator: ", "))]")
                }
                if !diffs.isEmpty {
                    ctx.errors.append(ConfigError(
                        file: ctx.file, line: m.line, field: "metrics[\(i)].name",
                        message: "metric \(quoted(m.name)) conflicts with its definition at line \(prev.line) (\(prevSymbol)): \(diffs.joined(separator: ", "))"))
                }
            }
        }
        for (name, (m, _)) in first where m.type.isHistogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let (other, _) = first[name + suffix] {
                    ctx.errors.append(ConfigError(
                        file: ctx.file, line: other.line, field: "name",
                        message: "metric \(quoted(name + suffix)) collides with the \(suffix) series of histogram \(quoted(name)) (line \(m.line))"))
                }
            }
        }
    }

    // MARK: - scalar helpers

    static func keyString(_ node: Node, path: String, ctx: inout Context) -> String? {
        guard case .scalar(let s) = node else {
            ctx.error(node, path.isEmpty ? "key" : path + "key", "keys must be plain strings, found \(describe(node))")
            return nil
        }
        return s.string
    }

    /// A non-empty string scalar; numbers are taken as written (`0.10` stays "0.10").
    static func requiredString(_ node: Node, _ field: String, ctx: inout Context) -> String? {
        guard case .scalar(let s) = node else {
            ctx.error(node, field, "expected a string, found \(describe(node))")
            return nil
        }
        if isNull(node) || s.string.trimmingCharacters(in: .whitespaces).isEmpty {
            ctx.error(node, field, "must not be empty")
            return nil
        }
        return s.string
    }

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let s) = node, s.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(s.string)
    }

    static func number(_ s: Node.Scalar) -> Double? {
        guard s.style == .plain else { return nil }
        let text = s.string.replacingOccurrences(of: "_", with: "")
        switch text {
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .infinity
        case "-.inf", "-.Inf", "-.INF": return -.infinity
        case ".nan", ".NaN", ".NAN": return .nan
        default: break
        }
        guard let first = text.utf8.first, first != 0x2B || text.utf8.count > 1 else { return nil }
        // Double(String) also accepts "inf", "nan" and hex floats; YAML spells those differently.
        guard text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x2D || $0 == 0x2B || $0 == 0x65 || $0 == 0x45 }) else {
            return nil
        }
        return Double(text)
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let s): return isNull(node) ? "null" : "\(quoted(s.string))"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out + "\""
    }

    static func formatBound(_ v: Double) -> String { PrometheusNumber.format(v) }

    static func yamlError(_ error: Error, file: String) -> ConfigError {
        guard let y = error as? YamlError else {
            return ConfigError(file: file, line: 0, field: "yaml", message: "\(error)")
        }
        func withContext(_ problem: String, _ context: YamlError.Context?) -> String {
            guard let context, !context.text.isEmpty else { return problem }
            return "\(problem) (\(context.text) at line \(context.mark.line))"
        }
        switch y {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _),
             let .composer(context, problem, mark, _):
            return ConfigError(file: file, line: mark.line, field: "yaml", message: withContext(problem, context))
        case let .duplicatedKeysInMapping(duplicates, context):
            return ConfigError(file: file, line: context.mark.line, field: "yaml",
                               message: "duplicate key \(duplicates.map(quoted).joined(separator: ", ")) in one mapping")
        case let .reader(problem, offset, _, yaml):
            var line = 1
            if let offset {
                line += yaml.utf8.prefix(offset).reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            }
            return ConfigError(file: file, line: line, field: "yaml", message: problem)
        default:
            return ConfigError(file: file, line: 0, field: "yaml", message: "\(y)")
        }
    }

    static func readProblem(_ path: String) -> String {
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) { return "no such file" }
        if isDir.boolValue { return "is a directory" }
        if !FileManager.default.isReadableFile(atPath: path) { return "permission denied" }
        return "not valid UTF-8 text"
    }
}
