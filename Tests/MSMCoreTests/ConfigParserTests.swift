import XCTest
@testable import MSMCore

final class ConfigParserTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    func parse(_ yaml: String, file: String = "my.yaml") throws -> SymbolConfig {
        try ConfigParser.parse(yaml: yaml, file: file)
    }

    /// Errors as `FILE:LINE: FIELD: PROBLEM` lines; fails the test if parsing succeeds.
    func errors(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try ConfigParser.parse(yaml: yaml, file: "my.yaml")
            XCTFail("expected errors", file: file, line: line)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    func testReferenceExample() throws {
        let c = try parse("""
        # ===== Custom Metrics =====
        - symbol: vllm.entrypoints.openai.serving_chat:OpenAIServingChat.create_chat_completion
          min_version: "0.9.1"
          metrics:
            - name: server:create_chat_completion:duration
              type: timer
        """)
        XCTAssertEqual(c.entries.count, 1)
        let e = c.entries[0]
        XCTAssertEqual(e.symbol, "vllm.entrypoints.openai.serving_chat:OpenAIServingChat.create_chat_completion")
        XCTAssertEqual(e.module, "vllm.entrypoints.openai.serving_chat")
        XCTAssertEqual(e.qualifiedName, "OpenAIServingChat.create_chat_completion")
        XCTAssertEqual(e.minVersion, "0.9.1")
        XCTAssertNil(e.maxVersion)
        XCTAssertEqual(e.line, 2)
        XCTAssertEqual(e.metrics, [MetricSpec(name: "server:create_chat_completion:duration", type: .timer, line: 5)])
        XCTAssertEqual(e.metrics[0].effectiveBuckets, DefaultBuckets.timer)
        XCTAssertEqual(c.summary, "my.yaml: OK (1 symbols, 1 metrics)")
        let def = try XCTUnwrap(c.definitions["server:create_chat_completion:duration"])
        XCTAssertEqual(def.help, "Execution duration of server:create_chat_completion:duration")
        XCTAssertEqual(def.buckets, DefaultBuckets.timer)
    }

    func testFullFeatured() throws {
        let c = try parse("""
        - symbol: a.b:C.d
          max_version: 0.10
          metrics:
            - {name: x_hist, type: histogram, expr: len(ret), buckets: [1, 2.5, 10]}
            - name: x_count
              type: counter
              labels:
                - {name: phase, expr: "'prefill'"}
                - {name: engine, expr: "str(self.i)"}
            - {name: x_gauge, type: gauge, expr: ret.n}
        - symbol: e:f
          metrics:
            - {name: x_count, type: counter, expr: "2", labels: [{name: engine, expr: "1"}, {name: phase, expr: "2"}]}
        """)
        XCTAssertEqual(c.entries[0].maxVersion, "0.10", "version kept as written, not as the float 0.1")
        XCTAssertEqual(c.entries[0].metrics[0].buckets, [1, 2.5, 10])
        XCTAssertEqual(c.entries[0].metrics[1].labels, [LabelSpec(name: "phase", expr: "'prefill'"),
                                                         LabelSpec(name: "engine", expr: "str(self.i)")])
        XCTAssertEqual(c.definitions["x_count"]?.labelNames, ["engine", "phase"])
        XCTAssertEqual(c.definitions["x_count"]?.help, "counter x_count from a.b:C.d")
        XCTAssertEqual(c.definitions["x_gauge"]?.buckets, [])
        XCTAssertEqual(c.definitions["x_hist"]?.buckets, [1, 2.5, 10])
        XCTAssertEqual(c.symbolCount, 2)
        XCTAssertEqual(c.metricCount, 4)
    }

    func testHistogramDefaultBuckets() throws {
        let c = try parse("- {symbol: 'a:b', metrics: [{name: h, type: histogram, expr: '1'}]}")
        XCTAssertEqual(c.definitions["h"]?.buckets, DefaultBuckets.histogram)
    }

    func testShippedConfigsAreValid() throws {
        for rel in ["Config/default.yaml", "Config/examples/custom.yaml"] {
            let path = Self.repoRoot.appendingPathComponent(rel).path
            let c = try ConfigParser.load(path: path)
            XCTAssertGreaterThan(c.entries.count, 0, rel)
            XCTAssertTrue(c.warnings.isEmpty, "\(rel): \(c.warnings)")
        }
        let d = try ConfigParser.load(path: Self.repoRoot.appendingPathComponent("Config/default.yaml").path)
        let chat = d.entries.filter { $0.metrics.contains { $0.name == "server:create_chat_completion:duration" } }
        XCTAssertEqual(chat.map(\.minVersion), ["0.11.1", nil])
        XCTAssertEqual(chat.map(\.maxVersion), [nil, "0.11.0"])
        XCTAssertEqual(d.definitions["scheduler:duration"]?.type, .timer)
        XCTAssertEqual(d.definitions["scheduler:batch_size"]?.type, .histogram)
        // vLLM's sections are timed once each, at their with-blocks
        let sections = d.entries.filter { $0.metrics.contains { $0.name == "record_function_or_nullcontext" } }
        XCTAssertEqual(sections.map(\.symbol), ["vllm.v1.utils:record_function_or_nullcontext"])
        XCTAssertEqual(sections.map(\.scope), [.block])
        XCTAssertEqual(d.entries.filter { $0.scope == .block }.count, 1)
    }

    func testUnknownType() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - name: m
              type: tmer
        """), [#"my.yaml:4: metrics[0].type: unknown type "tmer" (expected timer, counter, gauge, histogram)"#])
    }

    func testUnknownKeysNamed() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metric: []
          metrics:
            - name: m
              type: timer
              bukets: [1]
              labels:
                - {name: x, expr: "1", exp: "2"}
        """), [
            #"my.yaml:2: metric: unknown key "metric" (expected symbol, min_version, max_version, metrics, handler, scope)"#,
            #"my.yaml:6: metrics[0].bukets: unknown key "bukets" (expected name, type, expr, buckets, labels)"#,
            #"my.yaml:8: metrics[0].labels[0].exp: unknown key "exp" (expected name, expr)"#,
        ])
    }

    func testLabelExprKeyForDictResultsAccepted() throws {
        let c = try parse("""
        - symbol: a:b
          metrics:
            - name: scheduler:phase_batch_size
              type: histogram
              expr: "{'prefill': n1, 'decode': n2}"
              labels:
                - name: req_phase
                  expr: key
        """)
        XCTAssertEqual(c.entries[0].metrics[0].labels, [LabelSpec(name: "req_phase", expr: "key")])
        XCTAssertEqual(c.warnings, [])
    }

    func testSymbolValidation() {
        XCTAssertEqual(errors("""
        - symbol: "vllm.v1:"
          metrics: [{name: m, type: timer}]
        - symbol: "a.b.C.d"
          metrics: [{name: m, type: timer}]
        - symbol: "a.1b:C"
          metrics: [{name: m, type: timer}]
        - metrics: [{name: m, type: timer}]
        """), [
            #"my.yaml:1: symbol: invalid symbol "vllm.v1:" (expected module.path:Qualified.name, both parts dotted Python identifiers)"#,
            #"my.yaml:3: symbol: invalid symbol "a.b.C.d" (expected module.path:Qualified.name, both parts dotted Python identifiers)"#,
            #"my.yaml:5: symbol: invalid symbol "a.1b:C" (expected module.path:Qualified.name, both parts dotted Python identifiers)"#,
            "my.yaml:7: symbol: required key missing",
        ])
    }

    func testMetricsRequiredAndNonEmpty() {
        XCTAssertEqual(errors("""
        - symbol: a:b
        - symbol: a:c
          metrics: []
        - symbol: a:d
          metrics: {name: m}
        """), [
            "my.yaml:1: metrics: required key missing (each symbol needs at least one metric)",
            "my.yaml:3: metrics: must list at least one metric",
            "my.yaml:5: metrics: expected a list of metrics, found a mapping",
        ])
    }

    func testMetricNameRules() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - {name: "bad-name", type: timer}
            - {name: "", type: timer}
            - {type: timer}
            - {name: "9ok:fine_9", type: timer}
        """), [
            #"my.yaml:3: metrics[0].name: invalid metric name "bad-name" (vllm_profiling_NAME must match [a-zA-Z_:][a-zA-Z0-9_:]*)"#,
            "my.yaml:4: metrics[1].name: must not be empty",
            "my.yaml:5: metrics[2].name: required key missing",
        ])
    }

    func testExprRulesPerType() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - name: t
              type: timer
              expr: ret
            - name: h
              type: histogram
            - name: g
              type: gauge
              expr: null
            - {name: c, type: counter}
        """), [
            "my.yaml:5: metrics[0].expr: a timer measures the call duration and takes no expr (use type histogram for a value)",
            "my.yaml:6: metrics[1].expr: required for type histogram",
            "my.yaml:10: metrics[2].expr: required for type gauge",
        ])
    }

    func testBucketRules() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - {name: a, type: timer, buckets: [0.1, 0.1]}
            - {name: b, type: histogram, expr: x, buckets: [1, .inf]}
            - {name: c, type: counter, buckets: [1]}
            - {name: d, type: timer, buckets: [1, "two"]}
            - {name: e, type: timer, buckets: []}
            - {name: f, type: timer, buckets: 5}
        """), [
            "my.yaml:3: metrics[0].buckets[1]: bounds must be strictly ascending (0.1 after 0.1)",
            "my.yaml:4: metrics[1].buckets[1]: bounds must be finite (+Inf is added automatically)",
            "my.yaml:5: metrics[2].buckets: only timer and histogram metrics take buckets",
            #"my.yaml:6: metrics[3].buckets[1]: expected a number, found "two""#,
            "my.yaml:7: metrics[4].buckets: must list at least one bound",
            #"my.yaml:8: metrics[5].buckets: expected a list of numbers, found "5""#,
        ])
    }

    func testLabelRules() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - name: m
              type: counter
              labels:
                - {name: dp, expr: "1"}
                - {name: le, expr: "1"}
                - {name: __x, expr: "1"}
                - {name: "a-b", expr: "1"}
                - {name: ok, expr: "1"}
                - {name: ok, expr: "2"}
                - {name: noexpr}
        """), [
            #"my.yaml:6: metrics[0].labels[0].name: label "dp" is added by the agent and cannot be configured"#,
            #"my.yaml:7: metrics[0].labels[1].name: label "le" is reserved for histogram buckets"#,
            #"my.yaml:8: metrics[0].labels[2].name: label names starting with "__" are reserved by Prometheus"#,
            #"my.yaml:9: metrics[0].labels[3].name: invalid label name "a-b" (must match [a-zA-Z_][a-zA-Z0-9_]*)"#,
            #"my.yaml:11: metrics[0].labels[5].name: duplicate label "ok""#,
            "my.yaml:12: metrics[0].labels[6].expr: required key missing",
        ])
    }

    func testVersionRules() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          min_version: "0.9.x"
          metrics: [{name: m, type: timer}]
        - symbol: a:c
          min_version: "0.11.1"
          max_version: "0.11.0"
          metrics: [{name: n, type: timer}]
        - symbol: a:d
          min_version: "0.9"
          max_version: "0.9.0"
          metrics: [{name: o, type: timer}]
        """), [
            #"my.yaml:2: min_version: invalid version "0.9.x" (expected dotted numbers such as "0.9.1")"#,
            #"my.yaml:5: min_version: min_version "0.11.1" is greater than max_version "0.11.0""#,
        ])
    }

    func testConflictingDefinitions() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - {name: m, type: timer}
            - {name: n, type: counter, labels: [{name: x, expr: "1"}]}
            - {name: h, type: timer, buckets: [1, 2]}
        - symbol: a:c
          metrics:
            - {name: m, type: histogram, expr: "1"}
            - {name: n, type: counter}
            - {name: h, type: timer}
        """), [
            "my.yaml:8: metrics[0].name: metric \"m\" conflicts with its definition at line 3 (a:b): type histogram vs timer",
            "my.yaml:9: metrics[1].name: metric \"n\" conflicts with its definition at line 4 (a:b): labels [] vs [x]",
            "my.yaml:10: metrics[2].name: metric \"h\" conflicts with its definition at line 5 (a:b): different buckets",
        ])
    }

    func testSameMetricTwiceInOneEntry() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - {name: m, type: timer}
            - {name: m, type: timer}
        """), [#"my.yaml:4: metrics[1].name: metric "m" is listed twice for this symbol (also at line 3)"#])
    }

    func testHistogramSuffixCollision() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - {name: m, type: timer}
            - {name: m_count, type: counter}
        """), [#"my.yaml:4: name: metric "m_count" collides with the _count series of histogram "m" (line 3)"#])
    }

    func testStructureErrors() {
        XCTAssertEqual(errors("symbol: a:b\n"),
                       [#"my.yaml:1: config: expected a list of symbol entries (- symbol: ...), found a mapping"#])
        XCTAssertEqual(errors("# nothing\n"), ["my.yaml:1: config: empty config: expected a list of symbol entries"])
        XCTAssertEqual(errors("- just a string\n"),
                       [#"my.yaml:1: entry[0]: expected a mapping with symbol and metrics, found "just a string""#])
    }

    func testYAMLSyntaxErrorHasLine() {
        let e = errors("""
        - symbol: a:b
          metrics:
            - name: m
              type: [timer
        """)
        XCTAssertEqual(e.count, 1)
        XCTAssertTrue(e[0].hasPrefix("my.yaml:5: yaml: ") || e[0].hasPrefix("my.yaml:4: yaml: "), e[0])
        let dup = errors("""
        - symbol: a:b
          symbol: a:c
          metrics: [{name: m, type: timer}]
        """)
        XCTAssertEqual(dup, [#"my.yaml:1: yaml: duplicate key "symbol" in one mapping"#])
        let tab = errors("- symbol: a:b\n\tmetrics: []\n")
        XCTAssertEqual(tab.count, 1)
        XCTAssertTrue(tab[0].hasPrefix("my.yaml:2: yaml: "), tab[0])
    }

    func testMultipleErrorsSortedByLine() {
        let e = errors("""
        - symbol: bad
          metrics: [{name: m, type: tmer}]
        - symbol: a:b
          metrics:
            - {name: "x y", type: timer}
        """)
        XCTAssertEqual(e.map { $0.split(separator: ":").prefix(2).joined(separator: ":") },
                       ["my.yaml:1", "my.yaml:2", "my.yaml:5"])
    }

    func testLoadMissingFile() {
        XCTAssertThrowsError(try ConfigParser.load(path: "/nonexistent/x.yaml")) { error in
            XCTAssertEqual((error as? ConfigErrorList)?.description, "/nonexistent/x.yaml:0: config: cannot read file: no such file")
        }
    }

    func testSourceResolution() throws {
        XCTAssertEqual(ConfigSource.resolve(explicitPath: "a.yaml", environment: ["MS_SERVICE_METRIC_VLLM_CONFIG": "b.yaml"]), .file("a.yaml"))
        XCTAssertEqual(ConfigSource.resolve(explicitPath: nil, environment: ["MS_SERVICE_METRIC_VLLM_CONFIG": "b.yaml"]), .file("b.yaml"))
        XCTAssertEqual(ConfigSource.resolve(explicitPath: "", environment: ["MS_SERVICE_METRIC_VLLM_CONFIG": ""]), .builtIn)
        let c = try ConfigSource.builtIn.load(builtInText: "- {symbol: 'a:b', metrics: [{name: m, type: timer}]}")
        XCTAssertEqual(c.summary, "<built-in>: OK (1 symbols, 1 metrics)")
    }

    func testVersionOrdering() {
        XCTAssertLessThan(VersionString("0.9.1")!, VersionString("0.10")!)
        XCTAssertEqual(VersionString("0.9")!, VersionString("0.9.0")!)
        XCTAssertNil(VersionString("1..2"))
        XCTAssertNil(VersionString("v1"))
    }

    // MARK: - scope

    func testScopeDefaultsToCallAndBlockIsParsed() throws {
        let c = try parse("""
        - symbol: vllm.v1.utils:record_function_or_nullcontext
          scope: block
          metrics:
            - name: record_function_or_nullcontext
              type: timer
              labels:
                - {name: name, expr: name}
        - symbol: a:b
          scope: call
          metrics: [{name: m, type: timer}]
        - symbol: a:c
          metrics: [{name: n, type: timer}]
        - symbol: a:d
          scope: block
          handler: mypkg.metrics:on_block
          metrics:
            - {name: o, type: timer}
            - {name: p, type: counter, labels: [{name: section}]}
        """)
        XCTAssertEqual(c.entries.map(\.scope), [.block, .call, .call, .block])
        XCTAssertEqual(c.entries[3].handler, "mypkg.metrics:on_block")
    }

    func testUnknownOrMalformedScopeNamesTheLine() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics: [{name: m, type: timer}]
          scope: with
        - symbol: a:c
          scope: ""
          metrics: [{name: n, type: timer}]
        - symbol: a:d
          scope: [block]
          metrics: [{name: o, type: timer}]
        - symbol: a:e
          scope: Block
          metrics: [{name: p, type: timer}]
        """), [
            #"my.yaml:3: scope: unknown scope "with" (expected call: time the call, or block: time the with-block of the context manager the function returns)"#,
            #"my.yaml:5: scope: must not be empty"#,
            #"my.yaml:8: scope: expected a string, found a list"#,
            #"my.yaml:11: scope: unknown scope "Block" (expected call: time the call, or block: time the with-block of the context manager the function returns)"#,
        ])
    }
}
