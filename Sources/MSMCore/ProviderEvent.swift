/// One decoded ring-buffer record.
public enum ProviderEvent: Sendable, Equatable {
    /// One finished call of a probed function (or a continuation with more values).
    case sample(Sample)
    /// A JSON metadata message from a provider.
    case message(pid: Int32, tid: Int32, ktimeNs: UInt64, ProviderMessage)
    /// A record the agent cannot use; counted, never fatal.
    case malformed(MalformedReason)
}

/// `MSM_OP_*`: what the agent does with a value.
public enum SampleOp {
    public static let observeDuration: UInt32 = 1
    public static let observe: UInt32 = 2
    public static let inc: UInt32 = 3
    public static let set: UInt32 = 4
}

/// One `struct msm_value`.
public struct SampleValue: Sendable, Equatable {
    public var seriesId: UInt32
    /// `SampleOp`.
    public var op: UInt32
    public var value: Double

    @inlinable public init(seriesId: UInt32, op: UInt32, value: Double) {
        self.seriesId = seriesId
        self.op = op
        self.value = value
    }
}

/// One `MSM_KIND_SAMPLE` record: kernel header fields plus the sample payload.
public struct Sample: Sendable, Equatable {
    public var pid: Int32
    public var tid: Int32
    /// Kernel time (CLOCK_MONOTONIC) of the marker hit at function exit.
    public var ktimeNs: UInt64
    public var probeId: UInt32
    /// 0 returned, 1 raised.
    public var status: UInt32
    /// CLOCK_MONOTONIC at entry; 0 for continuation samples carrying further values.
    public var startNs: UInt64
    public var values: [SampleValue]

    public init(pid: Int32, tid: Int32, ktimeNs: UInt64, probeId: UInt32, status: UInt32, startNs: UInt64,
                values: [SampleValue]) {
        self.pid = pid
        self.tid = tid
        self.ktimeNs = ktimeNs
        self.probeId = probeId
        self.status = status
        self.startNs = startNs
        self.values = values
    }

    /// Seconds between entry and the kernel stamp at exit, nil when unknown or negative.
    @inlinable public var durationSeconds: Double? {
        guard startNs != 0, ktimeNs >= startNs else { return nil }
        return Double(ktimeNs &- startNs) / 1e9
    }
}

/// Why a record was not usable.
public enum MalformedReason: Sendable, Equatable, CustomStringConvertible {
    /// Shorter than `struct msm_event`.
    case shortHeader(Int)
    /// The kernel cut the payload (`MSM_EVENT_TRUNCATED`).
    case truncated
    /// `len` says more bytes than the record has.
    case lengthMismatch(declared: Int, available: Int)
    /// Payload shorter than its fixed part or than its `count` values.
    case shortPayload(kind: UInt16, length: Int)
    case unknownKind(UInt16)
    /// JSON message not parseable or missing required fields.
    case invalidJSON(String)

    public var description: String {
        switch self {
        case .shortHeader(let n): return "record of \(n) bytes is shorter than the event header"
        case .truncated: return "payload truncated by the kernel"
        case let .lengthMismatch(d, a): return "payload length \(d) exceeds the \(a) bytes present"
        case let .shortPayload(k, n): return "payload of kind \(k) too short (\(n) bytes)"
        case .unknownKind(let k): return "unknown payload kind \(k)"
        case .invalidJSON(let why): return "invalid JSON message: \(why)"
        }
    }

    /// Short stable label value for metrics.
    public var label: String {
        switch self {
        case .shortHeader: return "short_header"
        case .truncated: return "truncated"
        case .lengthMismatch: return "length_mismatch"
        case .shortPayload: return "short_payload"
        case .unknownKind: return "unknown_kind"
        case .invalidJSON: return "invalid_json"
        }
    }
}
