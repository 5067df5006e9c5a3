import XCTest
@testable import MSMCore

/// A target cannot make the aggregator keep more than Aggregator.TargetLimits allows; every
/// cut is counted per table.
final class TargetLimitsTests: XCTestCase {
    typealias F = Fixture

    func limits(registrations: Int = 20_000, series: Int = 4_000, exprErrors: Int = 1_000) -> Aggregator.TargetLimits {
        var l = Aggregator.TargetLimits()
        l.registrations = registrations
        l.series = series
        l.exprErrors = exprErrors
        return l
    }

    func testRegistrationsPastTheBoundAreCutAndCounted() async {
        let agg = Aggregator(targetLimits: limits(registrations: 3))
        await agg.configure(F.config())
        await agg.ingest((0..<10).map { F.series(10, UInt32($0), "calls", ["phase": "p\($0)"]) })
        // Re-announcing a known id is not a new registration.
        await agg.ingest([F.series(10, 1, "calls", ["phase": "p1"])])
        let s = await agg.snapshot()
        XCTAssertEqual(s.stats.limitCuts["registrations"], 7)
        XCTAssertEqual(s.seriesCount, 3)
    }

    func testSeriesCreatedByOneTargetAreBoundedButSharedSeriesAreNot() async {
        let agg = Aggregator(targetLimits: limits(series: 2))
        await agg.configure(F.config())
        await agg.ingest([F.series(10, 0, "calls", ["phase": "a"]), F.series(10, 1, "calls", ["phase": "b"]),
                          F.series(10, 2, "calls", ["phase": "c"])])
        // Another process joins series pid 10 created, and creates its own.
        await agg.ingest([F.series(11, 0, "calls", ["phase": "a"]), F.series(11, 1, "calls", ["phase": "d"])])
        let s = await agg.snapshot()
        XCTAssertEqual(s.stats.limitCuts["series"], 1)
        XCTAssertEqual(s.seriesCount, 3)  // a, b (pid 10), d (pid 11)
    }

    func testProbeStatesOnlyForConfiguredProbesAndKnownStates() async {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.ingest([
            F.msg(10, .probe(ProbeReport(probe: 0, state: "active", detail: ""))),
            F.msg(10, .probe(ProbeReport(probe: 1, state: "pwned", detail: "x"))),
            F.msg(10, .probe(ProbeReport(probe: 99, state: "active", detail: ""))),
            F.msg(10, .probe(ProbeReport(probe: -1, state: "active", detail: ""))),
            F.msg(10, .probe(ProbeReport(probe: 0, state: "active", detail: String(repeating: "d", count: 5000)))),
        ])
        let s = await agg.snapshot()
        XCTAssertEqual(s.stats.limitCuts["probe_states"], 2)
        XCTAssertEqual(s.probeStateCounts["pwned"], nil)
        XCTAssertEqual(s.probeStateCounts["error"], 1)
        XCTAssertEqual(s.probeStateCounts["active"], 1)
        let detail = s.process(10)?.state(probe: 0)?.detail ?? ""
        XCTAssertLessThanOrEqual(detail.count, 1001)
    }

    func testExpressionErrorReportsAreBounded() async {
        let agg = Aggregator(targetLimits: limits(exprErrors: 2))
        await agg.configure(F.config())
        await agg.ingest((0..<5).map {
            F.msg(10, .exprError(ExprErrorReport(probe: 0, metric: "m\($0)", count: 1, message: "boom")))
        } + [F.msg(10, .exprError(ExprErrorReport(probe: 7, metric: "calls", count: 1, message: "no such probe")))])
        let s = await agg.snapshot()
        XCTAssertEqual(s.stats.limitCuts["expr_errors"], 4)
        XCTAssertEqual(s.stats.expressionErrors, 2)
    }
}
