import CBPFShim
import CLibbpf
import Foundation

/// Receives ring-buffer records on the reader thread. `record` is called once per record with
/// the raw bytes (valid only during the call); `flush` once per drain, after the last record.
public protocol RingBufferSink: AnyObject, Sendable {
    func record(_ bytes: UnsafeRawBufferPointer)
    func flush()
}

/// A dedicated thread that drains the BPF ring buffer on a timer.
public final class RingBufferReader: @unchecked Sendable {
    private let ring: OpaquePointer
    private let sink: RingBufferSink
    private let interval: Duration
    private let stopped = Atomic(false)
    private var thread: Thread?

    init(mapFD: Int32, interval: Duration, sink: RingBufferSink) throws {
        let context = Unmanaged.passUnretained(sink as AnyObject).toOpaque()
        guard let ring = ring_buffer__new(mapFD, ringBufferRecord, context, nil) else {
            throw BPFCollector.Failure.ringBuffer(-errno)
        }
        self.ring = ring
        self.sink = sink
        self.interval = interval
        let thread = Thread { [self] in self.loop() }
        thread.name = "msm-ring-reader"
        self.thread = thread
        thread.start()
    }

    private func loop() {
        let (seconds, attoseconds) = interval.components
        var pause = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        while !stopped.load() {
            if ring_buffer__consume(ring) > 0 { sink.flush() }
            var rest = timespec()
            nanosleep(&pause, &rest)
        }
        if ring_buffer__consume(ring) > 0 { sink.flush() }
    }

    /// Drains what is left and stops the thread.
    public func stop() {
        stopped.store(true)
        while let thread, !thread.isFinished { usleep(1000) }
        thread = nil
    }

    deinit {
        stop()
        ring_buffer__free(ring)
    }
}

/// libbpf's sample callback: a global function (a closure in an actor-isolated context would
/// trap when libbpf calls it from the reader thread).
private func ringBufferRecord(_ context: UnsafeMutableRawPointer?, _ data: UnsafeMutableRawPointer?, _ size: Int) -> Int32 {
    guard let context, let data else { return 0 }
    let sink = Unmanaged<AnyObject>.fromOpaque(context).takeUnretainedValue() as! RingBufferSink
    sink.record(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// Minimal atomic flag (Synchronization.Atomic needs a stored `let` in a non-copyable context;
/// a lock-protected Bool is plenty for a stop flag checked every few milliseconds).
final class Atomic<Value: Sendable>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func load() -> Value { lock.withLock { value } }
    func store(_ newValue: Value) { lock.withLock { value = newValue } }
}
