import CMSMABI
import Foundation
import XCTest
@testable import MSMCore

final class EventDecoderTests: XCTestCase {
    /// Little-endian bytes of an integer.
    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    func testABISizes() {
        XCTAssertEqual(MemoryLayout<msm_event>.size, 24)
        XCTAssertEqual(MemoryLayout<msm_payload_header>.size, 8)
        XCTAssertEqual(MemoryLayout<msm_sample>.size, 24)
        XCTAssertEqual(MemoryLayout<msm_value>.size, 16)
    }

    /// A record built byte by byte, independent of EventEncoder.
    func testHandBuiltSampleWithValues() {
        var b: [UInt8] = []
        b += le(UInt64(5_000_000_123))     // ktime_ns
        b += le(UInt32(4321))              // pid
        b += le(UInt32(4322))              // tid
        b += le(UInt32(24 + 2 * 16))       // len
        b += le(UInt32(0))                 // flags
        b += le(UInt16(1))                 // kind = SAMPLE
        b += le(UInt16(2))                 // count
        b += le(UInt32(3))                 // probe_id
        b += le(UInt32(1))                 // status: raised
        b += le(UInt32(0))                 // reserved
        b += le(UInt64(4_000_000_000))     // start_ns
        b += le(UInt32(7)); b += le(UInt32(1)); b += le(UInt64(0))
        b += le(UInt32(9)); b += le(UInt32(2)); b += le((2.5).bitPattern)
        // One byte of slack before the header, so that loads are unaligned.
        let shifted = [UInt8(0xEE)] + b
        let event = shifted.withUnsafeBytes { EventDecoder.decode(UnsafeRawBufferPointer(rebasing: $0[1...])) }
        guard case .sample(let s) = event else { return XCTFail("\(event)") }
        XCTAssertEqual(s.pid, 4321)
        XCTAssertEqual(s.tid, 4322)
        XCTAssertEqual(s.ktimeNs, 5_000_000_123)
        XCTAssertEqual(s.probeId, 3)
        XCTAssertEqual(s.status, 1)
        XCTAssertEqual(s.startNs, 4_000_000_000)
        XCTAssertEqual(s.values, [SampleValue(seriesId: 7, op: 1, value: 0), SampleValue(seriesId: 9, op: 2, value: 2.5)])
        XCTAssertEqual(s.durationSeconds!, 1.000000123, accuracy: 1e-12)
        XCTAssertEqual(EventEncoder.sample(pid: 4321, tid: 4322, ktimeNs: 5_000_000_123, probeId: 3, status: 1,
                                           startNs: 4_000_000_000, values: s.values), b)
    }

    func testSampleWithoutValues() {
        let r = EventEncoder.sample(pid: 1, tid: 1, ktimeNs: 10, probeId: 0, startNs: 5, values: [])
        guard case .sample(let s) = EventDecoder.decode(r) else { return XCTFail() }
        XCTAssertEqual(s.values, [])
    }

    func testJSONMessages() throws {
        func msg(_ json: String) -> ProviderMessage? {
            if case let .message(pid, tid, kt, m) = EventDecoder.decode(EventEncoder.json(pid: 77, tid: 78, ktimeNs: 9, json)) {
                XCTAssertEqual([pid, tid], [77, 78])
                XCTAssertEqual(kt, 9)
                return m
            }
            return nil
        }
        XCTAssertEqual(msg(#"{"type":"hello","pid":77,"python":"3.11.7","implementation":"cpython","executable":"/usr/bin/python3","argv":["vllm","serve"],"title":"VLLM::EngineCore","vllm_version":null,"provider_version":"0.1","abi":1}"#),
                       .hello(HelloInfo(pid: 77, python: "3.11.7", implementation: "cpython", executable: "/usr/bin/python3",
                                        argv: ["vllm", "serve"], title: "VLLM::EngineCore", vllmVersion: nil,
                                        providerVersion: "0.1", abi: 1)))
        XCTAssertEqual(msg(#"{"type":"series","id":3,"metric":"m","labels":{"phase":"decode","n":2}}"#),
                       .series(SeriesAnnouncement(id: 3, metric: "m", labels: ["phase": "decode", "n": "2"])))
        XCTAssertEqual(msg(#"{"type":"probe","probe":1,"state":"not_found","detail":"no module x"}"#),
                       .probe(ProbeReport(probe: 1, state: "not_found", detail: "no module x")))
        XCTAssertEqual(msg(#"{"type":"expr_error","probe":1,"metric":"m","count":4,"message":"ZeroDivisionError"}"#),
                       .exprError(ExprErrorReport(probe: 1, metric: "m", count: 4, message: "ZeroDivisionError")))
        XCTAssertEqual(msg(#"{"type":"ack","generation":7,"enabled":true,"instrumented":3}"#),
                       .ack(AckReport(generation: 7, enabled: true, instrumented: 3)))
        XCTAssertEqual(msg(#"{"type":"bye","reason":"agent gone"}"#), .bye(reason: "agent gone"))
        XCTAssertEqual(msg(#"{"type":"future_thing","x":1}"#), .unknown(type: "future_thing"))
    }

    func testInvalidJSONIsMalformed() {
        for bad in ["{not json", "[1,2]", #"{"no_type":1}"#, #"{"type":"series","metric":"m"}"#,
                    #"{"type":"probe","probe":"x","state":"active"}"#] {
            guard case .malformed(.invalidJSON) = EventDecoder.decode(EventEncoder.json(pid: 1, bad)) else {
                return XCTFail("accepted \(bad)")
            }
        }
    }

    func testTruncatedAndShortRecords() {
        let good = EventEncoder.sample(pid: 1, tid: 1, ktimeNs: 10, probeId: 0, startNs: 5,
                                       values: [SampleValue(seriesId: 1, op: 3, value: 1)])
        // Kernel flagged truncation.
        let flagged = EventEncoder.sample(pid: 1, tid: 1, ktimeNs: 10, probeId: 0, startNs: 5, values: [], flags: 1)
        XCTAssertEqual(EventDecoder.decode(flagged), .malformed(.truncated))
        // Shorter than the event header.
        XCTAssertEqual(EventDecoder.decode(Array(good.prefix(23))), .malformed(.shortHeader(23)))
        XCTAssertEqual(EventDecoder.decode([UInt8]()), .malformed(.shortHeader(0)))
        // Header says more payload than present.
        XCTAssertEqual(EventDecoder.decode(Array(good.dropLast())), .malformed(.lengthMismatch(declared: 40, available: 39)))
        // Values cut off: count says 1 value, but the payload only has the fixed part.
        var payload = Array(good[24...])
        payload.removeLast(16)
        XCTAssertEqual(EventDecoder.decode(EventEncoder.record(pid: 1, tid: 1, ktimeNs: 1, payload: payload)),
                       .malformed(.shortPayload(kind: 1, length: 24)))
        // Payload shorter than the sample's fixed part.
        XCTAssertEqual(EventDecoder.decode(EventEncoder.record(pid: 1, tid: 1, ktimeNs: 1, payload: Array(payload.prefix(12)))),
                       .malformed(.shortPayload(kind: 1, length: 12)))
        // Payload shorter than the payload header.
        XCTAssertEqual(EventDecoder.decode(EventEncoder.record(pid: 1, tid: 1, ktimeNs: 1, payload: [1, 0])),
                       .malformed(.shortPayload(kind: 0, length: 2)))
        // Unknown kind.
        XCTAssertEqual(EventDecoder.decode(EventEncoder.record(pid: 1, tid: 1, ktimeNs: 1, payload: [9, 0, 0, 0, 0, 0, 0, 0])),
                       .malformed(.unknownKind(9)))
        // Trailing bytes beyond len are ignored.
        guard case .sample = EventDecoder.decode(good + [0, 0, 0]) else { return XCTFail() }
    }
}
