import Foundation
import XCTest
@testable import MSMCore

/// `handler:` entries: a Python function that records the entry's declared metrics itself.
final class HandlerConfigTests: XCTestCase {
    func parse(_ yaml: String) throws -> SymbolConfig {
        try ConfigParser.parse(yaml: yaml, file: "h.yaml")
    }

    func errors(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try ConfigParser.parse(yaml: yaml, file: "h.yaml")
            XCTFail("expected errors", file: file, line: line)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    func testHandlerEntryWithDeclaredMetrics() throws {
        let c = try parse("""
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          handler: mypkg.metrics:on_schedule
          metrics:
            - name: sched:duration
              type: timer
            - name: sched:phase_tokens
              type: histogram
              buckets: [1, 10, 100]
              labels:
                - name: req_phase
            - name: sched:calls
              type: counter
            - name: sched:waiting
              type: gauge
              expr: len(self.waiting)
              labels:
                - {name: engine, expr: "'v1'"}
        """)
        let e = c.entries[0]
        XCTAssertEqual(e.handler, "mypkg.metrics:on_schedule")
        XCTAssertEqual(e.metrics.map(\.name), ["sched:duration", "sched:phase_tokens", "sched:calls", "sched:waiting"])
        XCTAssertNil(e.metrics[1].expr)
        XCTAssertEqual(e.metrics[1].labels, [LabelSpec(name: "req_phase", expr: nil)])
        XCTAssertEqual(e.metrics[3].labels, [LabelSpec(name: "engine", expr: "'v1'")])
        XCTAssertEqual(c.warnings, [])
        XCTAssertEqual(c.definitions["sched:phase_tokens"]?.labelNames, ["req_phase"])
    }

    func testHandlerFormatAndPlacementErrors() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          handler: mypkg.metrics.on_schedule
          metrics: [{name: m, type: timer}]
        - symbol: a:c
          handler: ""
          metrics: [{name: n, type: timer}]
        - symbol: a:d
          handler: [x]
          metrics: [{name: o, type: timer}]
        """), [
            #"h.yaml:2: handler: invalid handler "mypkg.metrics.on_schedule" (expected module.path:function, both parts dotted Python identifiers, e.g. mypkg.metrics:on_schedule)"#,
            #"h.yaml:5: handler: must not be empty"#,
            #"h.yaml:8: handler: expected a string, found a list"#,
        ])
    }

    func testLabelWithoutExprOnlyForMetricsTheHandlerRecords() {
        XCTAssertEqual(errors("""
        - symbol: a:b
          metrics:
            - name: h
              type: histogram
              labels:
                - name: phase
        - symbol: a:c
          handler: m:f
          metrics:
            - name: t
              type: timer
              labels:
                - name: phase
            - name: g
              type: gauge
              expr: ret
              labels:
                - name: phase
        """), [
            "h.yaml:3: metrics[0].expr: required for type histogram",
            "h.yaml:6: metrics[0].labels[0].expr: required key missing",
            #"h.yaml:13: metrics[0].labels[0].expr: required key missing: metric "t" is recorded automatically (a timer); only metrics the handler records (no expr, not a timer) take labels without expr"#,
            #"h.yaml:18: metrics[1].labels[0].expr: required key missing: metric "g" is recorded automatically (it has an expr); only metrics the handler records (no expr, not a timer) take labels without expr"#,
        ])
    }

    func testLabelExprOfHandlerMetricIgnoredWithWarning() throws {
        let c = try parse("""
        - symbol: a:b
          handler: m:f
          metrics:
            - name: c
              type: counter
              labels:
                - {name: phase, expr: "'x'"}
        """)
        XCTAssertEqual(c.entries[0].metrics[0].labels, [LabelSpec(name: "phase", expr: nil)])
        XCTAssertEqual(c.warnings.count, 1)
        XCTAssertTrue(c.warnings[0].hasPrefix("h.yaml:7: metrics[0].labels[0].expr: ignored"), c.warnings[0])
    }

    func testReferenceToolHandlerPathIsAccepted() throws {
        let c = try parse("""
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          handler: ms_service_metric.handlers.scheduler:schedule_handler
          metrics:
            - name: scheduler:phase_batch_size
              type: histogram
              labels: [{name: req_phase}]
        """)
        XCTAssertEqual(c.entries[0].handler, "ms_service_metric.handlers.scheduler:schedule_handler")
    }

    func testHandlerTravelsInTheControlFile() throws {
        let c = try parse("""
        - symbol: a:b
          handler: pkg.mod:func
          metrics:
            - {name: h, type: histogram, labels: [{name: phase}]}
        - symbol: a:c
          metrics: [{name: t, type: timer}]
        """)
        let file = ControlFile(config: c, generation: 1, enabled: true, agentPid: 1)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: file.jsonData()) as? [String: Any])
        let probes = try XCTUnwrap(obj["probes"] as? [[String: Any]])
        XCTAssertEqual(probes[0]["handler"] as? String, "pkg.mod:func")
        XCTAssertTrue(probes[1]["handler"] is NSNull, "absent handler must be null")
        let metric = try XCTUnwrap((probes[0]["metrics"] as? [[String: Any]])?.first)
        XCTAssertTrue(metric["expr"] is NSNull)
        let label = try XCTUnwrap((metric["labels"] as? [[String: Any]])?.first)
        XCTAssertEqual(label["name"] as? String, "phase")
        XCTAssertTrue(label["expr"] is NSNull, "a label the handler passes has expr null")
        let back = try JSONDecoder().decode(ControlFile.self, from: file.jsonData())
        XCTAssertEqual(back, file)
    }
}
