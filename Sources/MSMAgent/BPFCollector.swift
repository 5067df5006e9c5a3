import CBPFShim
import CLibbpf
import CMSMABI
import Foundation

/// The kernel side as seen from the agent: the loaded BPF object (embedded in the binary),
/// its uprobe program, the ring buffer and the per-CPU counters.
public final class BPFCollector: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible {
        case open(Int32)
        case load(Int32)
        case missing(String)
        case attach(pid: Int32, path: String, errno: Int32)
        case ringBuffer(Int32)

        public var description: String {
            switch self {
            case let .open(code): "cannot open the embedded BPF object: \(libbpfMessage(code))"
            case let .load(code):
                "cannot load the BPF program into the kernel: \(libbpfMessage(code)) (needs root, a kernel with BPF and uprobes; see agent.log)"
            case let .missing(name): "the embedded BPF object has no \(name)"
            case let .attach(pid, path, code):
                "cannot attach the uprobe to pid \(pid) (\(path)): \(libbpfMessage(-code))"
            case let .ringBuffer(code): "cannot create the ring buffer reader: \(libbpfMessage(code))"
            }
        }
    }

    /// Counters kept per CPU by the BPF program (enum msm_stat), summed.
    public struct KernelStats: Sendable, Equatable {
        public var hits: UInt64 = 0
        public var drops: UInt64 = 0
        public var truncated: UInt64 = 0
        public var readErrors: UInt64 = 0
    }

    private let object: OpaquePointer
    private let program: OpaquePointer
    private let eventsFD: Int32
    private let statsFD: Int32
    // The object bytes must outlive bpf_object__open_mem's object.
    private let objectBytes: UnsafeMutableRawBufferPointer

    /// The ring buffer's default size: 16 MiB holds ~260 000 timer records, seconds of the
    /// busiest vLLM here between two drains.
    public static let defaultRingBytes = 16 << 20

    /// `ringBytes`: the ring buffer's size (a power of two, at least one page).
    public init(objectBytes bytes: Data, ringBytes: Int = BPFCollector.defaultRingBytes) throws {
        msm_libbpf_quiet_logging()
        objectBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        bytes.copyBytes(to: objectBytes)
        guard let object = bpf_object__open_mem(objectBytes.baseAddress, objectBytes.count, nil) else {
            objectBytes.deallocate()
            throw Failure.open(-errno)
        }
        if ringBytes != Self.defaultRingBytes, let events = bpf_object__find_map_by_name(object, "events") {
            let set = bpf_map__set_max_entries(events, UInt32(ringBytes))
            guard set == 0 else {
                bpf_object__close(object)
                objectBytes.deallocate()
                throw Failure.load(set)
            }
        }
        let loaded = bpf_object__load(object)
        guard loaded == 0 else {
            bpf_object__close(object)
            objectBytes.deallocate()
            throw Failure.load(loaded)
        }
        guard let program = bpf_object__find_program_by_name(object, "msm_emit_hit") else {
            throw Failure.missing("program msm_emit_hit")
        }
        guard let events = bpf_object__find_map_by_name(object, "events"),
              let stats = bpf_object__find_map_by_name(object, "stats") else {
            throw Failure.missing("maps events/stats")
        }
        self.object = object
        self.program = program
        eventsFD = bpf_map__fd(events)
        statsFD = bpf_map__fd(stats)
    }

    deinit {
        bpf_object__close(object)
        objectBytes.deallocate()
    }

    /// Attaches the entry uprobe to `msm_emit` in the provider library mapped by `pid`, then
    /// raises the library's semaphore in that process only, through a second uprobe on the
    /// never-called `msm_arm` that carries the ref_ctr. The kernel raises a ref_ctr when it
    /// registers a uprobe, before libbpf gives it its program; arming only after the marker's
    /// program is attached means nothing the provider sends on seeing the semaphore is lost.
    /// Libraries without `msm_arm` (none built from this tree) get the ref_ctr on the marker.
    public func attach(pid: Int32, libraryPath: String, markerOffset: UInt64, armOffset: UInt64?,
                       semaphoreOffset: UInt64) throws -> UprobeLink {
        guard let armOffset else {
            return UprobeLink(marker: try attachOne(pid, libraryPath, markerOffset, refCtr: semaphoreOffset), arm: nil)
        }
        let marker = try attachOne(pid, libraryPath, markerOffset, refCtr: 0)
        do {
            let arm = try attachOne(pid, libraryPath, armOffset, refCtr: semaphoreOffset)
            return UprobeLink(marker: marker, arm: arm)
        } catch {
            bpf_link__destroy(marker)
            throw error
        }
    }

    private func attachOne(_ pid: Int32, _ path: String, _ offset: UInt64, refCtr: UInt64) throws -> OpaquePointer {
        guard let link = msm_attach_uprobe(program, pid, path, Int(offset), Int(refCtr)) else {
            throw Failure.attach(pid: pid, path: path, errno: errno)
        }
        return link
    }

    public func kernelStats() -> KernelStats {
        var values = [UInt64](repeating: 0, count: Int(MSM_STAT_COUNT.rawValue))
        guard msm_sum_percpu_counters(statsFD, &values, UInt32(values.count)) == 0 else { return KernelStats() }
        return KernelStats(
            hits: values[Int(MSM_STAT_HITS.rawValue)], drops: values[Int(MSM_STAT_DROPS.rawValue)],
            truncated: values[Int(MSM_STAT_TRUNCATED.rawValue)], readErrors: values[Int(MSM_STAT_READ_ERRORS.rawValue)])
    }

    /// Starts a thread that drains the ring buffer every `interval` while records arrive (up
    /// to `idleInterval` apart when none do) and hands each record's bytes to `sink`. The BPF
    /// program writes without wakeups (a wakeup per record costs the target ~1.3 µs more per
    /// call), so the reader polls on a timer instead of epoll.
    public func startReading(interval: Duration = .milliseconds(5), idleInterval: Duration = .milliseconds(50),
                             sink: RingBufferSink) throws -> RingBufferReader {
        try RingBufferReader(mapFD: eventsFD, interval: interval, idleInterval: idleInterval, sink: sink)
    }
}

/// The uprobes of one target: the marker's, and the arming one that holds the semaphore up.
/// Detaching lowers the semaphore first (the provider stops sending), then removes the
/// marker's probe (≈110 ms each in the kernel on this VM).
public final class UprobeLink: @unchecked Sendable {
    private var marker: OpaquePointer?
    private var arm: OpaquePointer?

    init(marker: OpaquePointer, arm: OpaquePointer?) {
        self.marker = marker
        self.arm = arm
    }

    public func detach() {
        lowerSemaphore()
        if let marker { bpf_link__destroy(marker) }
        marker = nil
    }

    /// Removes the arming probe only: the provider sees its semaphore drop.
    func lowerSemaphore() {
        if let arm { bpf_link__destroy(arm) }
        arm = nil
    }

    /// Detaches many links at once: every semaphore first, then every marker probe. Each
    /// removal waits in the kernel for a grace period (≈0.1 s idle, seconds on a busy vLLM
    /// host); removals running at the same time share them, so each one gets its own thread
    /// (a concurrentPerform would run only as many as there are cores).
    public static func detachAll(_ links: [UprobeLink]) {
        runConcurrently(links.map { link in { link.lowerSemaphore() } })
        runConcurrently(links.map { link in { link.detach() } })
    }

    private static func runConcurrently(_ work: [@Sendable () -> Void]) {
        let group = DispatchGroup()
        for item in work {
            group.enter()
            let thread = Thread {
                item()
                group.leave()
            }
            thread.name = "msm-detach"
            thread.start()
        }
        group.wait()
    }

    deinit { detach() }
}

func libbpfMessage(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    _ = libbpf_strerror(code < 0 ? code : -code, &buffer, buffer.count)
    let text = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return "\(text) (error \(code))"
}
