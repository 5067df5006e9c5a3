import Foundation
import XCTest
@testable import MSMCore

final class StatusReportTests: XCTestCase {
    typealias F = Fixture

    func makeReport() async -> StatusReport {
        let agg = Aggregator()
        await agg.configure(F.config())
        await agg.setProcessInfo(pid: 99, dp: -1, role: "main")
        await agg.ingest([
            F.msg(99, .hello(HelloInfo(python: "3.11.7", title: "python3 svc.py", vllmVersion: nil))),
            F.msg(99, .probe(ProbeReport(probe: 0, state: "active", detail: ""))),
            F.msg(99, .ack(AckReport(generation: 3, enabled: true, instrumented: 1))),
            F.msg(99, .exprError(ExprErrorReport(probe: 0, metric: "size", count: 2, message: "NameError: s"))),
            F.series(99, 0, "work:duration"),
            F.sample(99, [(0, SampleOp.observeDuration, 0)]),
        ])
        await agg.setKernelStats(hits: 6, drops: 0, truncated: 0, readErrors: 0)
        return StatusReport(snapshot: await agg.snapshot(),
                            agent: AgentFacts(pid: 1234, listen: "127.0.0.1:9464", configPath: "<built-in>", generation: 3),
                            targets: [TargetFacts(pid: 99, state: .attached, role: "main", title: "", provider: "exec"),
                                      TargetFacts(pid: 50, state: .noProvider, role: "main", title: "bash")],
                            notes: ["agent note"])
    }

    func testJSONShape() async throws {
        let report = await makeReport()
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: report.jsonData()) as? [String: Any])
        XCTAssertEqual(Set(obj.keys), ["agent_pid", "listen", "config", "generation", "events", "drops", "truncated",
                                       "read_errors", "orphan_samples", "expression_errors", "targets", "probes", "notes"])
        XCTAssertEqual(obj["agent_pid"] as? Int, 1234)
        XCTAssertEqual(obj["config"] as? String, "<built-in>")
        XCTAssertEqual(obj["events"] as? Int, 6)
        XCTAssertEqual(obj["expression_errors"] as? Int, 2)
        let targets = try XCTUnwrap(obj["targets"] as? [[String: Any]])
        XCTAssertEqual(targets.map { $0["pid"] as? Int }, [50, 99])
        let t = targets[1]
        XCTAssertEqual(Set(t.keys), ["pid", "state", "role", "dp", "title", "python", "provider", "generation", "probes"])
        XCTAssertEqual(t["state"] as? String, "attached")
        XCTAssertEqual(t["dp"] as? Int, -1)
        XCTAssertEqual(t["title"] as? String, "python3 svc.py", "falls back to the hello title")
        XCTAssertEqual(t["python"] as? String, "3.11.7")
        XCTAssertEqual(t["provider"] as? String, "exec")
        XCTAssertEqual(t["generation"] as? Int, 3)
        let probes = try XCTUnwrap(t["probes"] as? [[String: Any]])
        XCTAssertEqual(probes.count, 2)
        XCTAssertEqual(Set(probes[0].keys), ["id", "symbol", "state", "detail", "hits"])
        XCTAssertEqual(probes[0]["symbol"] as? String, "svc:work")
        XCTAssertEqual(probes[0]["state"] as? String, "active")
        XCTAssertEqual(probes[0]["hits"] as? Int, 1)
        XCTAssertEqual(probes[1]["state"] as? String, "pending")
        XCTAssertEqual(targets[0]["state"] as? String, "no_provider")
        XCTAssertTrue(targets[0]["python"] is NSNull)
        XCTAssertEqual((targets[0]["probes"] as? [Any])?.count, 0)
        let global = try XCTUnwrap(obj["probes"] as? [[String: Any]])
        XCTAssertEqual(global[0]["hits"] as? Int, 1)
        XCTAssertEqual(global[0]["states"] as? [String: Int], ["active": 1])
        let notes = try XCTUnwrap(obj["notes"] as? [String])
        XCTAssertEqual(notes, ["agent note",
                               "pid 99: 2 expression error(s) in size (svc:work): NameError: s",
                               "vLLM not importable in pid 99: min_version/max_version ignored"])
        XCTAssertEqual(try StatusReport.decode(report.jsonData()), report)
    }

    func testHumanTable() async {
        let text = await makeReport().renderTable()
        XCTAssertTrue(text.hasPrefix("agent pid 1234, listening on 127.0.0.1:9464, config <built-in>, generation 3\n"), text)
        let lines = text.split(separator: "\n").map(String.init)
        let header = try! XCTUnwrap(lines.first { $0.hasPrefix("PID") })
        XCTAssertEqual(header.split(separator: " ", omittingEmptySubsequences: true),
                       ["PID", "STATE", "ROLE", "DP", "GEN", "PYTHON", "PROVIDER", "PROBES", "TITLE"])
        let row = try! XCTUnwrap(lines.first { $0.hasPrefix("99 ") })
        XCTAssertEqual(row.split(separator: " ", omittingEmptySubsequences: true).prefix(8),
                       ["99", "attached", "main", "-1", "3", "3.11.7", "exec", "1/2"])
        // Columns line up: the STATE column starts at the same offset in header and rows.
        XCTAssertEqual(header.range(of: "STATE")!.lowerBound.utf16Offset(in: header),
                       row.range(of: "attached")!.lowerBound.utf16Offset(in: row))
        XCTAssertTrue(text.contains("  - agent note\n"))
        XCTAssertTrue(lines.contains { $0.hasPrefix("0 ") && $0.hasSuffix("svc:work") && $0.contains("active=1") })
    }
}
