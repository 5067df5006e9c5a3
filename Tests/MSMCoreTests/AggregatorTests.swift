import XCTest
@testable import MSMCore

/// Builders shared by the aggregator and renderer tests.
enum Fixture {
    static let yaml = """
    - symbol: svc:work
      metrics:
        - name: work:duration
          type: timer
          buckets: [0.1, 1, 10]
        - name: calls
          type: counter
          labels: [{name: phase, expr: "p"}]
        - name: queue
          type: gauge
          expr: q
        - name: size
          type: histogram
          expr: s
          buckets: [1, 4]
    - symbol: svc:other
      metrics:
        - name: other:duration
          type: timer
    """

    static func config(_ text: String = yaml) -> SymbolConfig {
        try! ConfigParser.parse(yaml: text, file: "t.yaml")
    }

    static func series(_ pid: Int32, _ id: UInt32, _ metric: String, _ labels: [String: String] = [:]) -> ProviderEvent {
        .message(pid: pid, tid: pid, ktimeNs: 0, .series(SeriesAnnouncement(id: id, metric: metric, labels: labels)))
    }

    static func msg(_ pid: Int32, _ m: ProviderMessage) -> ProviderEvent { .message(pid: pid, tid: pid, ktimeNs: 0, m) }

    static func sample(_ pid: Int32, probe: UInt32 = 0, start: UInt64 = 1_000_000_000, end: UInt64 = 1_500_000_000,
                       _ values: [(UInt32, UInt32, Double)]) -> ProviderEvent {
        .sample(Sample(pid: pid, tid: pid, ktimeNs: end, probeId: probe, status: 0, startNs: start,
                       values: values.map { SampleValue(seriesId: $0.0, op: $0.1, value: $0.2) }))
    }
}

final class AggregatorTests: XCTestCase {
    typealias F = Fixture

    func family(_ s: AggregatorSnapshot, _ name: String) -> MetricFamilySnapshot? {
        s.families.first { $0.definition.name == name }
    }

    func value(_ s: AggregatorSnapshot, _ name: String, _ labels: [String: String]) -> SeriesValue? {
        let want = labels.map { Label($0.key, $0.value) }.sorted()
        return family(s, name)?.series.first { $0.labels == want }?.value
    }

    func hist(_ s: AggregatorSnapshot, _ name: String, _ labels: [String: String]) -> HistogramState? {
        if case .histogram(let h) = value(s, name, labels) { return h }
        return nil
    }

    func testTimerCounterHistogramAcrossProcessesAreSummed() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.setProcessInfo(pid: 10, dp: 0, role: "engine_core")
        await agg.setProcessInfo(pid: 11, dp: 0, role: "engine_core")
        await agg.ingest([
            F.series(10, 0, "work:duration"), F.series(10, 1, "calls", ["phase": "decode"]), F.series(10, 2, "size"),
            // The other process uses different ids for the same series.
            F.series(11, 5, "work:duration"), F.series(11, 6, "calls", ["phase": "decode"]),
            F.sample(10, start: 1_000_000_000, end: 1_050_000_000, [(0, SampleOp.observeDuration, 0), (1, SampleOp.inc, 1), (2, SampleOp.observe, 3)]),
            F.sample(11, start: 2_000_000_000, end: 4_000_000_000, [(5, SampleOp.observeDuration, 0), (6, SampleOp.inc, 2)]),
            F.sample(10, start: 0, [(2, SampleOp.observe, 100)]),
        ])
        let s = await agg.snapshot()
        let h = try! XCTUnwrap(hist(s, "work:duration", ["dp": "0"]))
        XCTAssertEqual(h.count, 2)
        XCTAssertEqual(h.sum, 2.05, accuracy: 1e-9)
        XCTAssertEqual(h.counts, [1, 0, 1, 0])  // 0.05 <= 0.1, 2.0 in (1, 10]
        XCTAssertEqual(value(s, "calls", ["dp": "0", "phase": "decode"]), .counter(3))
        XCTAssertEqual(hist(s, "size", ["dp": "0"])?.counts, [0, 1, 1])
        XCTAssertEqual(s.stats.events, 8)
        XCTAssertEqual(s.stats.samples, 3)
        XCTAssertEqual(s.probes[0].hits, 2, "the continuation sample (start 0) is not a hit")
        XCTAssertEqual(s.process(10)?.hits(probe: 0), 1)
        XCTAssertEqual(s.seriesCount, 3)
    }

    func testDPLabelSeparatesSeriesAndDefaultsToMinusOne() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.setProcessInfo(pid: 20, dp: 1, role: "engine_core")
        await agg.ingest([
            F.series(20, 0, "calls", ["phase": "x"]), F.series(21, 0, "calls", ["phase": "x", "dp": "7"]),
            F.sample(20, [(0, SampleOp.inc, 1)]), F.sample(21, [(0, SampleOp.inc, 5)]),
        ])
        let s = await agg.snapshot()
        XCTAssertEqual(value(s, "calls", ["dp": "1", "phase": "x"]), .counter(1))
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "x"]), .counter(5), "a provider-sent dp is replaced")
        XCTAssertEqual(family(s, "calls")?.series.count, 2)
    }

    func testCountersSurviveExitGaugesVanish() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.series(30, 0, "calls", ["phase": "a"]), F.series(30, 1, "queue"),
            F.sample(30, [(0, SampleOp.inc, 4), (1, SampleOp.set, 12)]),
        ])
        var s = await agg.snapshot()
        XCTAssertEqual(value(s, "queue", ["dp": "-1"]), .gauge(12))
        await agg.processExited(pid: 30)
        s = await agg.snapshot()
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(4))
        XCTAssertNil(family(s, "queue"), "gauge of an exited process must vanish")
        XCTAssertNil(s.process(30))
        XCTAssertEqual(s.probes[0].hits, 1, "hits of exited processes are kept")
        XCTAssertEqual(s.seriesCount, 1)
        // The same pid coming back starts with empty tables: old ids are orphans.
        await agg.ingest([F.sample(30, [(0, SampleOp.inc, 1)])])
        s = await agg.snapshot()
        XCTAssertEqual(s.stats.orphanSamples, 1)
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(4))
    }

    func testGaugeMostRecentWinsAcrossLiveProcesses() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.series(40, 0, "queue"), F.series(41, 0, "queue"),
            F.sample(40, [(0, SampleOp.set, 1)]), F.sample(41, [(0, SampleOp.set, 2)]),
        ])
        var s = await agg.snapshot()
        XCTAssertEqual(value(s, "queue", ["dp": "-1"]), .gauge(2))
        await agg.ingest([F.sample(40, [(0, SampleOp.set, 3)])])
        s = await agg.snapshot()
        XCTAssertEqual(value(s, "queue", ["dp": "-1"]), .gauge(3))
        await agg.processExited(pid: 40)
        s = await agg.snapshot()
        XCTAssertEqual(value(s, "queue", ["dp": "-1"]), .gauge(2), "falls back to the live process")
        await agg.processExited(pid: 41)
        s = await agg.snapshot()
        XCTAssertNil(family(s, "queue"))
        XCTAssertEqual(s.seriesCount, 0)
    }

    func testOrphansUnknownMetricsAndOpMismatch() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.sample(50, [(9, SampleOp.inc, 1)]),                          // never announced
            F.series(50, 1, "not_configured"), F.sample(50, [(1, SampleOp.inc, 1)]),
            F.series(50, 2, "calls", ["wrong": "x"]), F.sample(50, [(2, SampleOp.inc, 1)]),
            F.series(50, 3, "calls", ["phase": "p"]),
            F.sample(50, [(3, SampleOp.set, 1), (3, SampleOp.inc, -1), (3, SampleOp.inc, .nan), (3, SampleOp.inc, 2)]),
            F.series(50, 4, "work:duration"), F.sample(50, start: 0, [(4, SampleOp.observeDuration, 0)]),
            F.sample(50, probe: 99, [(3, SampleOp.inc, 1)]),
            .malformed(.truncated), .malformed(.unknownKind(7)),
        ])
        let s = await agg.snapshot()
        XCTAssertEqual(s.stats.orphanSamples, 1)
        XCTAssertEqual(s.stats.valuesDropped, ["unknown_metric": 1, "label_mismatch": 1, "op_mismatch": 1,
                                               "negative_increment": 1, "non_finite": 1, "bad_duration": 1])
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "p"]), .counter(3))
        XCTAssertEqual(s.stats.malformed, 2)
        XCTAssertEqual(s.stats.malformedByReason, ["truncated": 1, "unknown_kind": 1])
        XCTAssertEqual(s.stats.unknownProbeSamples, 1)
        XCTAssertNil(family(s, "not_configured"))
    }

    func testCardinalityCap() async {
        let agg = Aggregator(seriesLimitPerMetric: 3)
        await agg.configure(F.config())
        var batch: [ProviderEvent] = []
        for i in 0..<5 {
            batch.append(F.series(60, UInt32(i), "calls", ["phase": "p\(i)"]))
            batch.append(F.sample(60, [(UInt32(i), SampleOp.inc, 1)]))
        }
        batch.append(F.series(60, 10, "size"))
        batch.append(F.sample(60, [(10, SampleOp.observe, 1)]))
        await agg.ingest(batch)
        let s = await agg.snapshot()
        XCTAssertEqual(family(s, "calls")?.series.count, 3)
        XCTAssertEqual(s.stats.seriesDropped, ["calls": 2])
        XCTAssertEqual(s.stats.valuesDropped["series_limit"], 2)
        XCTAssertEqual(family(s, "size")?.series.count, 1, "the cap is per metric")
    }

    func testReconfigureKeepsUnchangedSeriesAndDropsChanged() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.series(70, 0, "work:duration"), F.series(70, 1, "calls", ["phase": "a"]), F.series(70, 2, "size"),
            F.series(70, 3, "other:duration"),
            F.sample(70, [(0, SampleOp.observeDuration, 0), (1, SampleOp.inc, 5), (2, SampleOp.observe, 2)]),
            F.sample(70, probe: 1, [(3, SampleOp.observeDuration, 0)]),
            F.msg(70, .probe(ProbeReport(probe: 1, state: "active", detail: ""))),
        ])
        // New config: entries swapped (probe ids change), size gets new buckets, calls unchanged,
        // work:duration unchanged, other:duration removed.
        let next = F.config("""
        - symbol: svc:new
          metrics: [{name: fresh, type: counter}]
        - symbol: svc:work
          metrics:
            - {name: work:duration, type: timer, buckets: [0.1, 1, 10]}
            - {name: calls, type: counter, labels: [{name: phase, expr: "q"}]}
            - {name: size, type: histogram, expr: s, buckets: [1, 2, 4]}
        - symbol: svc:other
          metrics: [{name: other2:duration, type: timer}]
        """)
        await agg.reconfigure(next)
        var s = await agg.snapshot()
        XCTAssertEqual(hist(s, "work:duration", ["dp": "-1"])?.count, 1)
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(5))
        // Changed buckets drop the data; the live registration rebinds to an empty series,
        // exposed again once it receives a value.
        XCTAssertNil(hist(s, "size", ["dp": "-1"]), "an empty series is not exposed")
        XCTAssertNil(family(s, "other:duration"), "removed metric is dropped")
        XCTAssertEqual(s.probes.map(\.symbol), ["svc:new", "svc:work", "svc:other"])
        XCTAssertEqual(s.probes.map(\.hits), [0, 1, 1], "hits follow their symbol")
        XCTAssertEqual(s.process(70)?.state(probe: 2)?.state, "active", "probe states follow their symbol")
        // Existing ids keep working for kept series; the old registration of size rebinds to the new definition.
        await agg.ingest([F.sample(70, probe: 1, [(1, SampleOp.inc, 1), (2, SampleOp.observe, 2)])])
        s = await agg.snapshot()
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(6))
        XCTAssertEqual(hist(s, "size", ["dp": "-1"])?.counts, [0, 1, 0, 0])
        XCTAssertEqual(hist(s, "size", ["dp": "-1"])?.bounds, [1, 2, 4])
    }

    func testAnnouncedSeriesAreExposedOnlyOnceTheyHaveAValue() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        // Two processes announce the same series; only the engine core (dp 0) records.
        await agg.setProcessInfo(pid: 81, dp: 0, role: "engine_core")
        await agg.ingest([F.series(81, 0, "work:duration"), F.series(81, 1, "calls", ["phase": "a"]),
                          F.series(82, 0, "work:duration"), F.series(82, 1, "calls", ["phase": "a"])])
        var s = await agg.snapshot()
        XCTAssertNil(family(s, "work:duration"), "nothing observed yet")
        XCTAssertNil(family(s, "calls"))
        await agg.ingest([F.sample(81, [(0, SampleOp.observeDuration, 0), (1, SampleOp.inc, 0)])])
        s = await agg.snapshot()
        XCTAssertEqual(hist(s, "work:duration", ["dp": "0"])?.count, 1)
        XCTAssertNil(hist(s, "work:duration", ["dp": "-1"]), "the API server's announced series stays hidden")
        XCTAssertEqual(value(s, "calls", ["dp": "0", "phase": "a"]), .counter(0), "an increment by 0 is a value")
        XCTAssertNil(value(s, "calls", ["dp": "-1", "phase": "a"]))
    }

    func testDPChangeMovesTheProcessGaugeValues() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        // A worker sets its memory snapshot before the agent knows its rank.
        await agg.ingest([F.series(83, 1, "queue"), F.sample(83, [(1, SampleOp.set, 7)]),
                          F.series(84, 1, "queue"), F.sample(84, [(1, SampleOp.set, 3)])])
        await agg.setProcessInfo(pid: 83, dp: 1, role: "worker")
        let s = await agg.snapshot()
        XCTAssertEqual(value(s, "queue", ["dp": "1"]), .gauge(7), "the value moved with the process")
        XCTAssertEqual(value(s, "queue", ["dp": "-1"]), .gauge(3), "the other process keeps its own")
    }

    func testDPChangeRekeysSeries() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([F.series(80, 0, "calls", ["phase": "a"]), F.series(80, 1, "queue"),
                          F.sample(80, [(0, SampleOp.inc, 1), (1, SampleOp.set, 5)])])
        await agg.setProcessInfo(pid: 80, dp: 2, role: "engine_core")
        await agg.ingest([F.sample(80, [(0, SampleOp.inc, 1), (1, SampleOp.set, 6)])])
        let s = await agg.snapshot()
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(1))
        XCTAssertEqual(value(s, "calls", ["dp": "2", "phase": "a"]), .counter(1))
        XCTAssertEqual(family(s, "queue")?.series.map(\.value), [.gauge(6)])
        XCTAssertEqual(s.process(80)?.role, "engine_core")
    }

    func testMetadataMessages() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.msg(90, .hello(HelloInfo(python: "3.11.7", title: "VLLM::EngineCore_DP0", vllmVersion: "0.32.0"))),
            F.msg(90, .probe(ProbeReport(probe: 0, state: "active", detail: ""))),
            F.msg(90, .probe(ProbeReport(probe: 1, state: "not_found", detail: "no module svc"))),
            F.msg(91, .probe(ProbeReport(probe: 0, state: "active", detail: ""))),
            F.msg(90, .exprError(ExprErrorReport(probe: 0, metric: "size", count: 3, message: "boom"))),
            F.msg(90, .exprError(ExprErrorReport(probe: 0, metric: "size", count: 5, message: "boom2"))),
            F.msg(91, .exprError(ExprErrorReport(probe: 0, metric: "size", count: 2, message: "x"))),
            F.msg(90, .ack(AckReport(generation: 4, enabled: true, instrumented: 2))),
            F.msg(91, .unknown(type: "later")),
        ])
        var s = await agg.snapshot()
        XCTAssertEqual(s.stats.expressionErrors, 7)
        XCTAssertEqual(s.probeStateCounts, ["active": 2, "not_found": 1])
        XCTAssertEqual(s.probes[0].states, ["active": 2])
        XCTAssertEqual(s.process(90)?.hello?.python, "3.11.7")
        XCTAssertEqual(s.process(90)?.exprErrors.first?.message, "boom2")
        XCTAssertEqual(s.process(90)?.lastAck?.generation, 4)
        let acks = await agg.acknowledgedGenerations()
        XCTAssertEqual(acks, [90: 4])
        await agg.ingest([F.msg(90, .bye(reason: "off"))])
        await agg.processExited(pid: 91)
        s = await agg.snapshot()
        XCTAssertEqual(s.probeStateCounts, [:])
        XCTAssertEqual(s.process(90)?.byeReason, "off")
        XCTAssertEqual(s.stats.expressionErrors, 7, "expression errors of exited processes stay counted")
    }

    func testKernelStats() async {
        let agg = Aggregator()
        await agg.setKernelStats(hits: 10, drops: 2, truncated: 1, readErrors: 3)
        let s = await agg.snapshot()
        XCTAssertEqual(s.kernel, KernelStats(hits: 10, drops: 2, truncated: 1, readErrors: 3))
    }

    func testSeriesAnnouncedBeforeConfigureBindsAfterwards() async {
        let agg = Aggregator()
        await agg.ingest([F.series(95, 0, "calls", ["phase": "a"])])
        await agg.configure(F.config())
        await agg.ingest([F.sample(95, [(0, SampleOp.inc, 1)])])
        let s = await agg.snapshot()
        XCTAssertEqual(value(s, "calls", ["dp": "-1", "phase": "a"]), .counter(1))
    }

    func testHistogramStateBoundaries() {
        var h = HistogramState(bounds: [1, 2])
        for v in [0.5, 1, 1.0000001, 2, 3, -1] { h.observe(v) }
        XCTAssertEqual(h.counts, [3, 2, 1])
        XCTAssertEqual(h.cumulativeCounts, [3, 5, 6])
        var big = HistogramState(bounds: (1...40).map(Double.init))
        for v in [0.5, 1, 17, 17.5, 40, 41] { big.observe(v) }
        XCTAssertEqual(big.cumulativeCounts[0], 2)
        XCTAssertEqual(big.counts[16], 1)
        XCTAssertEqual(big.counts[17], 1)
        XCTAssertEqual(big.counts[39], 1)
        XCTAssertEqual(big.counts[40], 1)
    }
}
