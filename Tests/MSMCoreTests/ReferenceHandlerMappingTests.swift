import XCTest
@testable import MSMCore

/// Entries naming the reference tool's own handlers map onto the built-in config.
final class ReferenceHandlerMappingTests: XCTestCase {
    let builtIns = try! ConfigParser.parse(yaml: """
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          metrics:
            - name: scheduler:duration
              type: timer
            - name: scheduler:batch_size
              type: histogram
              expr: len(ret.num_scheduled_tokens)
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          min_version: "0.11.0"
          metrics:
            - name: waiting_batch_size
              type: gauge
              expr: len(self.waiting)
        - symbol: vllm.v1.engine.async_llm:AsyncLLM.generate
          metrics:
            - name: engine:generate:duration
              type: timer
        """, file: "<built-in>")

    func map(_ yaml: String) throws -> SymbolConfig {
        ReferenceHandlerMapping.apply(to: try ConfigParser.parse(yaml: yaml, file: "user.yaml"), builtIns: builtIns)
    }

    func testReferenceHandlerEntryBecomesTheBuiltInEntriesOfItsSymbol() throws {
        let c = try map("""
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          handler: ms_service_metric.handlers.scheduler:schedule_handler
          metrics:
            - name: my:schedule
              type: timer
            - name: scheduler:phase_tokens
              type: histogram
              labels:
                - name: req_phase
        """)
        XCTAssertEqual(c.entries.map(\.symbol), Array(repeating: "vllm.v1.core.sched.scheduler:Scheduler.schedule", count: 3))
        XCTAssertTrue(c.entries.allSatisfy { $0.handler == nil })
        XCTAssertEqual(c.entries[0].metrics.map(\.name), ["my:schedule"], "own timer kept, handler-only metric dropped")
        XCTAssertEqual(c.entries[1].metrics.map(\.name), ["scheduler:duration", "scheduler:batch_size"])
        XCTAssertEqual(c.entries[2].minVersion, "0.11.0", "version guards of the built-in entry kept")
        XCTAssertEqual(c.entries[2].line, 1, "reported at the user's entry")
        XCTAssertNil(c.definitions["scheduler:phase_tokens"])
        XCTAssertEqual(c.warnings.count, 1)
        XCTAssertTrue(c.warnings[0].hasPrefix("user.yaml:1: handler: ms_service_metric.handlers.scheduler:schedule_handler"),
                      c.warnings[0])
        XCTAssertTrue(c.warnings[0].contains("scheduler:duration, scheduler:batch_size, waiting_batch_size"), c.warnings[0])
    }

    func testUserDefinitionsWinOverBuiltInNames() throws {
        let c = try map("""
        - symbol: vllm.v1.core.sched.scheduler:Scheduler.schedule
          handler: ms_service_metric:handler
          metrics:
            - name: scheduler:duration
              type: timer
              buckets: [0.5, 1]
        - symbol: mypkg:other
          metrics:
            - name: waiting_batch_size
              type: counter
        """)
        let names = c.entries.flatMap { $0.metrics.map(\.name) }
        XCTAssertEqual(names.filter { $0 == "scheduler:duration" }.count, 1)
        XCTAssertEqual(c.definitions["scheduler:duration"]?.buckets, [0.5, 1])
        XCTAssertEqual(c.definitions["waiting_batch_size"]?.type, .counter)
        XCTAssertTrue(names.contains("scheduler:batch_size"))
    }

    func testSymbolWithoutBuiltInAndOwnHandlersStayAsWritten() throws {
        let yaml = """
        - symbol: mypkg.service:Engine.step
          handler: ms_service_metric.handlers:whatever
          metrics:
            - name: step
              type: timer
        - symbol: vllm.v1.engine.async_llm:AsyncLLM.generate
          handler: mypkg.metrics:on_generate
          metrics:
            - name: gen:tokens
              type: histogram
        """
        let c = try map(yaml)
        XCTAssertEqual(c, try ConfigParser.parse(yaml: yaml, file: "user.yaml"))
    }

    func testTwoEntriesOfOneSymbolAddTheBuiltInsOnce() throws {
        let c = try map("""
        - symbol: vllm.v1.engine.async_llm:AsyncLLM.generate
          handler: ms_service_metric.a:x
          metrics:
            - {name: a, type: timer}
        - symbol: vllm.v1.engine.async_llm:AsyncLLM.generate
          handler: ms_service_metric.b:y
          metrics:
            - {name: b, type: timer}
        """)
        XCTAssertEqual(c.entries.flatMap { $0.metrics.map(\.name) }, ["a", "engine:generate:duration", "b"])
    }

    func testReferencePackageIsMatchedByModule() {
        XCTAssertTrue(ReferenceHandlerMapping.isReferenceHandler("ms_service_metric:f"))
        XCTAssertTrue(ReferenceHandlerMapping.isReferenceHandler("ms_service_metric.handlers.x:f"))
        XCTAssertFalse(ReferenceHandlerMapping.isReferenceHandler("ms_service_metrics.x:f"))
        XCTAssertFalse(ReferenceHandlerMapping.isReferenceHandler("mypkg.ms_service_metric:f"))
        XCTAssertFalse(ReferenceHandlerMapping.isReferenceHandler(nil))
    }
}
