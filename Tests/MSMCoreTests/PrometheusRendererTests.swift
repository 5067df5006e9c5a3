import Foundation
import XCTest
@testable import MSMCore

final class PrometheusRendererTests: XCTestCase {
    typealias F = Fixture

    func renderedFixture() async -> String {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.setProcessInfo(pid: 1, dp: 0, role: "engine_core")
        await agg.ingest([
            F.series(1, 0, "work:duration"),
            F.series(1, 1, "calls", ["phase": "de\"c\\o\nde"]),
            F.series(1, 2, "calls", ["phase": "a"]),
            F.series(2, 0, "work:duration"),
            F.series(2, 1, "queue"),
            F.sample(1, start: 1_000_000_000, end: 1_050_000_000, [(0, SampleOp.observeDuration, 0), (1, SampleOp.inc, 1), (2, SampleOp.inc, 0.5)]),
            F.sample(2, start: 1_000_000_000, end: 3_000_000_000, [(0, SampleOp.observeDuration, 0), (1, SampleOp.set, -2.25)]),
            F.sample(2, start: 1_000_000_000, end: 21_000_000_000, [(0, SampleOp.observeDuration, 0)]),
            F.msg(1, .probe(ProbeReport(probe: 0, state: "active", detail: ""))),
        ])
        await agg.setKernelStats(hits: 9, drops: 1, truncated: 0, readErrors: 0)
        return PrometheusRenderer.render(await agg.snapshot(),
                                         context: .init(version: "1.2.3", targets: 2, previousScrapeDuration: 0.0015))
    }

    func testConfigFamiliesExact() async {
        let text = await renderedFixture()
        let vllm = text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { $0.contains("vllm_profiling_") }.joined(separator: "\n")
        XCTAssertEqual(vllm, #"""
        # HELP vllm_profiling_calls_total counter calls from svc:work
        # TYPE vllm_profiling_calls_total counter
        vllm_profiling_calls_total{dp="0",phase="a"} 0.5
        vllm_profiling_calls_total{dp="0",phase="de\"c\\o\nde"} 1
        # HELP vllm_profiling_queue gauge queue from svc:work
        # TYPE vllm_profiling_queue gauge
        vllm_profiling_queue{dp="-1"} -2.25
        # HELP vllm_profiling_work:duration Execution duration of work:duration
        # TYPE vllm_profiling_work:duration histogram
        vllm_profiling_work:duration_bucket{dp="-1",le="0.1"} 0
        vllm_profiling_work:duration_bucket{dp="-1",le="1.0"} 0
        vllm_profiling_work:duration_bucket{dp="-1",le="10.0"} 1
        vllm_profiling_work:duration_bucket{dp="-1",le="+Inf"} 2
        vllm_profiling_work:duration_sum{dp="-1"} 22
        vllm_profiling_work:duration_count{dp="-1"} 2
        vllm_profiling_work:duration_bucket{dp="0",le="0.1"} 1
        vllm_profiling_work:duration_bucket{dp="0",le="1.0"} 1
        vllm_profiling_work:duration_bucket{dp="0",le="10.0"} 1
        vllm_profiling_work:duration_bucket{dp="0",le="+Inf"} 1
        vllm_profiling_work:duration_sum{dp="0"} 0.05
        vllm_profiling_work:duration_count{dp="0"} 1
        """#)
    }

    func testSelfMetrics() async {
        let text = await renderedFixture()
        for line in [
            #"ms_service_metric_build_info{version="1.2.3"} 1"#,
            "ms_service_metric_events_total 9",
            "ms_service_metric_kernel_hits_total 9",
            "ms_service_metric_drops_total 1",
            "ms_service_metric_truncated_events_total 0",
            "ms_service_metric_orphan_samples_total 0",
            "ms_service_metric_expression_errors_total 0",
            "ms_service_metric_malformed_events_total 0",
            #"ms_service_metric_probes{state="active"} 1"#,
            #"ms_service_metric_probes{state="not_found"} 0"#,
            "ms_service_metric_targets 2",
            "ms_service_metric_scrape_duration_seconds 0.0015",
            "# TYPE ms_service_metric_series_dropped_total counter",
        ] {
            XCTAssertTrue(text.contains("\n" + line + "\n") || text.hasPrefix(line + "\n"), "missing: \(line)")
        }
    }

    func testFamiliesSortedAndUnique() async {
        let text = await renderedFixture()
        let names = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        XCTAssertEqual(names, names.sorted())
        XCTAssertEqual(Set(names).count, names.count)
        XCTAssertTrue(text.hasSuffix("\n"))
    }

    func testEscaping() {
        var out = ""
        PrometheusRenderer.escapeHelp("a\\b\nc\"d", into: &out)
        XCTAssertEqual(out, #"a\\b\nc"d"#)
        out = ""
        PrometheusRenderer.escapeLabelValue("a\\b\nc\"d", into: &out)
        XCTAssertEqual(out, #"a\\b\nc\"d"#)
    }

    func testNumberFormatting() {
        XCTAssertEqual(PrometheusNumber.format(42), "42")
        XCTAssertEqual(PrometheusNumber.format(-0.0), "0")
        XCTAssertEqual(PrometheusNumber.format(0.1), "0.1")
        XCTAssertEqual(PrometheusNumber.format(1e-5), "1e-05")
        XCTAssertEqual(PrometheusNumber.format(1e300), "1e+300")
        XCTAssertEqual(PrometheusNumber.format(123456789012), "123456789012")
        XCTAssertEqual(PrometheusNumber.format(.infinity), "+Inf")
        XCTAssertEqual(PrometheusNumber.format(-.infinity), "-Inf")
        XCTAssertEqual(PrometheusNumber.format(.nan), "NaN")
        XCTAssertEqual(PrometheusNumber.formatBound(1), "1.0")
        XCTAssertEqual(PrometheusNumber.formatBound(0.005), "0.005")
        XCTAssertEqual(PrometheusNumber.formatBound(16384), "16384.0")
    }

    /// Pipes the exposition through `promtool check metrics` (Prometheus' own parser and
    /// linter). Parse errors fail; of the lint findings only the two deliberate ones are
    /// allowed for `vllm_profiling_` families: colons in names (kept from the reference tool).
    func testPromtoolAcceptsOutput() async throws {
        guard let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }) else { throw XCTSkip("promtool not installed") }
        let agg = Aggregator()
        await agg.configure(try ConfigParser.load(path: ConfigParserTests.repoRoot.appendingPathComponent("Config/default.yaml").path))
        await agg.configure(F.config(F.yaml + """

        - symbol: svc:more
          metrics:
            - {name: scheduler:recompute_events, type: counter}
        """))
        await agg.ingest([
            F.series(1, 0, "work:duration"), F.series(1, 1, "calls", ["phase": "x\"y\\z\nw"]), F.series(1, 2, "queue"),
            F.series(1, 3, "size"), F.series(1, 4, "scheduler:recompute_events"),
            F.sample(1, [(0, SampleOp.observeDuration, 0), (1, SampleOp.inc, 1), (2, SampleOp.set, .nan),
                         (3, SampleOp.observe, 1e20), (4, SampleOp.inc, 1)]),
            F.msg(1, .probe(ProbeReport(probe: 0, state: "weird state", detail: ""))),
        ])
        let text = PrometheusRenderer.render(await agg.snapshot(), context: .init(targets: 1, previousScrapeDuration: 0.01))
        let (status, output) = try run(promtool, ["check", "metrics"], stdin: text)
        XCTAssertTrue(status == 0 || status == 3, "promtool failed (\(status)): \(output)")
        let allowed = ["metric names should not contain ':'"]
        for line in output.split(separator: "\n") where !line.isEmpty {
            XCTAssertTrue(line.hasPrefix("vllm_profiling_") && allowed.contains { line.hasSuffix($0) },
                          "unexpected promtool finding: \(line)")
        }
        XCTAssertTrue(output.contains("vllm_profiling_scheduler:recompute_events_total metric names should not contain ':'"),
                      "the lint check itself ran and counters carry _total: \(output)")
    }

    /// OpenMetrics: counter families are named without `_total`, samples with it; `# EOF` ends.
    func testOpenMetricsFormat() async {
        let agg = Aggregator()
        await agg.configure(F.config(F.yaml))
        await agg.ingest([F.series(1, 1, "calls", ["phase": "a"]), F.sample(1, [(1, SampleOp.inc, 2)])])
        let text = PrometheusRenderer.render(await agg.snapshot(), format: .openMetrics)
        XCTAssertTrue(text.contains("# TYPE vllm_profiling_calls counter\n"), text)
        XCTAssertTrue(text.contains("vllm_profiling_calls_total{dp=\"-1\",phase=\"a\"} 2\n"), text)
        XCTAssertTrue(text.contains("# TYPE ms_service_metric_events counter\n"), text)
        XCTAssertTrue(text.hasSuffix("# EOF\n"), text)
    }

    func run(_ path: String, _ args: [String], stdin: String) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        p.standardError = outPipe
        try p.run()
        let writer = Thread {
            inPipe.fileHandleForWriting.write(Data(stdin.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        writer.start()
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }
}
