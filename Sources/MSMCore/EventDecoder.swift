import CMSMABI
import Foundation

/// Decodes one ring-buffer record: `struct msm_event` followed by `len` payload bytes
/// (bpf/msm_abi.h). Layout facts come from the C structs through CMSMABI; values are read
/// with unaligned little-endian loads. A sample costs one array allocation (its values).
public enum EventDecoder {
    // Offsets and sizes from the C declarations, so a change to msm_abi.h cannot drift silently.
    @usableFromInline static let eventSize = MemoryLayout<msm_event>.size
    @usableFromInline static let offKtime = MemoryLayout<msm_event>.offset(of: \msm_event.ktime_ns)!
    @usableFromInline static let offPid = MemoryLayout<msm_event>.offset(of: \msm_event.pid)!
    @usableFromInline static let offTid = MemoryLayout<msm_event>.offset(of: \msm_event.tid)!
    @usableFromInline static let offLen = MemoryLayout<msm_event>.offset(of: \msm_event.len)!
    @usableFromInline static let offFlags = MemoryLayout<msm_event>.offset(of: \msm_event.flags)!

    @usableFromInline static let headerSize = MemoryLayout<msm_payload_header>.size
    @usableFromInline static let offKind = MemoryLayout<msm_payload_header>.offset(of: \msm_payload_header.kind)!
    @usableFromInline static let offCount = MemoryLayout<msm_payload_header>.offset(of: \msm_payload_header.count)!
    @usableFromInline static let offProbe = MemoryLayout<msm_payload_header>.offset(of: \msm_payload_header.probe_id)!

    @usableFromInline static let sampleSize = MemoryLayout<msm_sample>.size
    @usableFromInline static let offStatus = MemoryLayout<msm_sample>.offset(of: \msm_sample.status)!
    @usableFromInline static let offStart = MemoryLayout<msm_sample>.offset(of: \msm_sample.start_ns)!

    @usableFromInline static let valueSize = MemoryLayout<msm_value>.size
    @usableFromInline static let offSeries = MemoryLayout<msm_value>.offset(of: \msm_value.series_id)!
    @usableFromInline static let offOp = MemoryLayout<msm_value>.offset(of: \msm_value.op)!
    @usableFromInline static let offBits = MemoryLayout<msm_value>.offset(of: \msm_value.value_bits)!

    static let kindSample = UInt16(MSM_KIND_SAMPLE.rawValue)
    static let kindJSON = UInt16(MSM_KIND_JSON.rawValue)
    static let truncatedFlag = UInt32(MSM_EVENT_TRUNCATED)

    @inline(__always) static func u16(_ p: UnsafeRawBufferPointer, _ o: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))
    }
    @inline(__always) static func u32(_ p: UnsafeRawBufferPointer, _ o: Int) -> UInt32 {
        UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))
    }
    @inline(__always) static func u64(_ p: UnsafeRawBufferPointer, _ o: Int) -> UInt64 {
        UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
    }

    /// Decodes a record; the bytes are not retained.
    public static func decode(_ record: UnsafeRawBufferPointer) -> ProviderEvent {
        guard record.count >= eventSize else { return .malformed(.shortHeader(record.count)) }
        let flags = u32(record, offFlags)
        if flags & truncatedFlag != 0 { return .malformed(.truncated) }
        let len = Int(u32(record, offLen))
        let available = record.count - eventSize
        guard len <= available else { return .malformed(.lengthMismatch(declared: len, available: available)) }
        let pid = Int32(bitPattern: u32(record, offPid))
        let tid = Int32(bitPattern: u32(record, offTid))
        let ktime = u64(record, offKtime)
        let payload = UnsafeRawBufferPointer(rebasing: record[eventSize..<(eventSize + len)])
        guard len >= headerSize else { return .malformed(.shortPayload(kind: 0, length: len)) }
        let kind = u16(payload, offKind)
        switch kind {
        case kindSample:
            guard len >= sampleSize else { return .malformed(.shortPayload(kind: kind, length: len)) }
            let count = Int(u16(payload, offCount))
            guard len >= sampleSize + count * valueSize else { return .malformed(.shortPayload(kind: kind, length: len)) }
            let values = [SampleValue](unsafeUninitializedCapacity: count) { buf, initialized in
                var o = sampleSize
                for i in 0..<count {
                    buf.baseAddress!.advanced(by: i).initialize(to: SampleValue(
                        seriesId: u32(payload, o + offSeries), op: u32(payload, o + offOp),
                        value: Double(bitPattern: u64(payload, o + offBits))))
                    o += valueSize
                }
                initialized = count
            }
            return .sample(Sample(pid: pid, tid: tid, ktimeNs: ktime, probeId: u32(payload, offProbe),
                                  status: u32(payload, offStatus), startNs: u64(payload, offStart), values: values))
        case kindJSON:
            let json = Data(UnsafeRawBufferPointer(rebasing: payload[headerSize...]))
            do {
                return .message(pid: pid, tid: tid, ktimeNs: ktime, try ProviderMessage.decode(json: json))
            } catch {
                return .malformed(.invalidJSON(error.description))
            }
        default:
            return .malformed(.unknownKind(kind))
        }
    }

    public static func decode(_ bytes: [UInt8]) -> ProviderEvent {
        bytes.withUnsafeBytes { decode($0) }
    }

    public static func decode(_ data: Data) -> ProviderEvent {
        data.withUnsafeBytes { decode($0) }
    }
}

/// Builds records in the ABI layout (for tests, benchmarks and tools that replay events).
public enum EventEncoder {
    public static func sample(pid: Int32, tid: Int32, ktimeNs: UInt64, probeId: UInt32, status: UInt32 = 0,
                              startNs: UInt64, values: [SampleValue], flags: UInt32 = 0) -> [UInt8] {
        var p: [UInt8] = []
        p.reserveCapacity(EventDecoder.sampleSize + values.count * EventDecoder.valueSize)
        put(&p, UInt16(MSM_KIND_SAMPLE.rawValue))
        put(&p, UInt16(values.count))
        put(&p, probeId)
        put(&p, status)
        put(&p, UInt32(0))
        put(&p, startNs)
        for v in values {
            put(&p, v.seriesId)
            put(&p, v.op)
            put(&p, v.value.bitPattern)
        }
        return record(pid: pid, tid: tid, ktimeNs: ktimeNs, payload: p, flags: flags)
    }

    public static func json(pid: Int32, tid: Int32 = 0, ktimeNs: UInt64 = 0, _ text: String) -> [UInt8] {
        var p: [UInt8] = []
        put(&p, UInt16(MSM_KIND_JSON.rawValue))
        put(&p, UInt16(0))
        put(&p, UInt32(0))
        p.append(contentsOf: Array(text.utf8))
        return record(pid: pid, tid: tid, ktimeNs: ktimeNs, payload: p)
    }

    public static func record(pid: Int32, tid: Int32, ktimeNs: UInt64, payload: [UInt8], flags: UInt32 = 0,
                              declaredLength: UInt32? = nil) -> [UInt8] {
        var r: [UInt8] = []
        r.reserveCapacity(EventDecoder.eventSize + payload.count)
        put(&r, ktimeNs)
        put(&r, UInt32(bitPattern: pid))
        put(&r, UInt32(bitPattern: tid))
        put(&r, declaredLength ?? UInt32(payload.count))
        put(&r, flags)
        r.append(contentsOf: payload)
        return r
    }

    static func put<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
}
