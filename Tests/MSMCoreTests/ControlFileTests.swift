import Foundation
import XCTest
@testable import MSMCore

final class ControlFileTests: XCTestCase {
    func testJSONShapeMatchesProtocol() throws {
        let config = try ConfigParser.parse(yaml: """
        - symbol: package.module:Class.method
          min_version: "0.9.1"
          metrics:
            - name: scheduler:duration
              type: timer
            - name: phases
              type: counter
              labels: [{name: phase, expr: "'prefill' if x else 'decode'"}]
        - symbol: other:f
          max_version: "0.11.0"
          metrics: [{name: g, type: gauge, expr: ret}]
        """, file: "c.yaml")
        let file = ControlFile(config: config, generation: 7, enabled: true, agentPid: 4242)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: file.jsonData()) as? [String: Any])
        XCTAssertEqual(Set(obj.keys), ["abi", "generation", "enabled", "agent_pid", "probes"])
        XCTAssertEqual(obj["abi"] as? Int, 1)
        XCTAssertEqual(obj["generation"] as? Int, 7)
        XCTAssertEqual(obj["enabled"] as? Bool, true)
        XCTAssertEqual(obj["agent_pid"] as? Int, 4242)
        let probes = try XCTUnwrap(obj["probes"] as? [[String: Any]])
        XCTAssertEqual(probes.count, 2)
        XCTAssertEqual(Set(probes[0].keys), ["id", "symbol", "min_version", "max_version", "metrics", "handler", "scope"])
        XCTAssertEqual(probes[0]["scope"] as? String, "call", "scope is always written, call by default")
        XCTAssertEqual(probes[0]["id"] as? Int, 0)
        XCTAssertEqual(probes[1]["id"] as? Int, 1)
        XCTAssertEqual(probes[0]["symbol"] as? String, "package.module:Class.method")
        XCTAssertEqual(probes[0]["min_version"] as? String, "0.9.1")
        XCTAssertTrue(probes[0]["max_version"] is NSNull, "absent max_version must be null")
        XCTAssertTrue(probes[1]["min_version"] is NSNull)
        XCTAssertEqual(probes[1]["max_version"] as? String, "0.11.0")
        let metrics = try XCTUnwrap(probes[0]["metrics"] as? [[String: Any]])
        XCTAssertEqual(Set(metrics[0].keys), ["name", "type", "expr", "labels"])
        XCTAssertEqual(metrics[0]["name"] as? String, "scheduler:duration")
        XCTAssertEqual(metrics[0]["type"] as? String, "timer")
        XCTAssertTrue(metrics[0]["expr"] is NSNull, "timer expr must be null")
        XCTAssertEqual((metrics[0]["labels"] as? [Any])?.count, 0)
        let labels = try XCTUnwrap(metrics[1]["labels"] as? [[String: String]])
        XCTAssertEqual(labels, [["name": "phase", "expr": "'prefill' if x else 'decode'"]])
        let g = try XCTUnwrap((probes[1]["metrics"] as? [[String: Any]])?.first)
        XCTAssertEqual(g["expr"] as? String, "ret")
    }

    func testRoundTripAndDisabled() throws {
        let config = try ConfigParser.parse(yaml: "- {symbol: 'a:b', metrics: [{name: m, type: timer}]}", file: "x")
        let file = ControlFile(config: config, generation: 2, enabled: false, agentPid: 1)
        let back = try JSONDecoder().decode(ControlFile.self, from: file.jsonData())
        XCTAssertEqual(back, file)
        XCTAssertFalse(back.enabled)
        XCTAssertEqual(try file.jsonData(), try file.encoded())
    }

    func testScopeBlockWrittenAndAbsentScopeReadAsCall() throws {
        let config = try ConfigParser.parse(yaml: """
        - symbol: vllm.v1.utils:record_function_or_nullcontext
          scope: block
          metrics: [{name: s, type: timer, labels: [{name: name, expr: name}]}]
        """, file: "s.yaml")
        let file = ControlFile(config: config, generation: 3, enabled: true, agentPid: 9)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: file.jsonData()) as? [String: Any])
        let probe = try XCTUnwrap((obj["probes"] as? [[String: Any]])?.first)
        XCTAssertEqual(probe["scope"] as? String, "block")
        XCTAssertEqual(try JSONDecoder().decode(ControlFile.self, from: file.jsonData()), file)
        // a file written before the key existed
        let old = #"{"abi":1,"agent_pid":1,"enabled":true,"generation":1,"probes":[{"handler":null,"id":0,"max_version":null,"metrics":[],"min_version":null,"symbol":"a:b"}]}"#
        let back = try JSONDecoder().decode(ControlFile.self, from: Data(old.utf8))
        XCTAssertEqual(back.probes[0].scope, .call)
    }
}
