import CBPFShim
import CLibbpf
import Foundation

/// Receives ring-buffer records on the reader thread. `record` is called once per record with
/// the raw bytes (valid only during the call); `flush` once per drain, after the last record.
public protocol RingBufferSink: AnyObject, Sendable {
    func record(_ bytes: UnsafeRawBufferPointer)
    func flush()
}

/// A dedicated thread that drains the BPF ring buffer on a timer: every `interval` while
/// records arrive; after a drain that found nothing the pause doubles, up to `idleInterval`,
/// so an agent whose targets are idle wakes 20 times a second instead of 200. The first record
/// after a quiet spell waits at most `idleInterval`; 16 MiB of ring cannot fill in that time.
public final class RingBufferReader: @unchecked Sendable {
    private let ring: OpaquePointer
    private let sink: RingBufferSink
    private let interval: Duration
    private let idleInterval: Duration
    private let stopped = Atomic(false)
    private var thread: Thread?

    init(mapFD: Int32, interval: Duration, idleInterval: Duration, sink: RingBufferSink) throws {
        let context = Unmanaged.passUnretained(sink as AnyObject).toOpaque()
        guard let ring = ring_buffer__new(mapFD, ringBufferRecord, context, nil) else {
            throw BPFCollector.Failure.ringBuffer(-errno)
        }
        self.ring = ring
        self.sink = sink
        self.interval = interval
        self.idleInterval = max(interval, idleInterval)
        let thread = Thread { [self] in self.loop() }
        thread.name = "msm-ring-reader"
        self.thread = thread
        thread.start()
    }

    private func loop() {
        var pause = interval
        while !stopped.load() {
            if ring_buffer__consume(ring) > 0 {
                sink.flush()
                pause = interval
            } else {
                pause = Self.nextPause(after: pause, busy: interval, idle: idleInterval)
            }
            let (seconds, attoseconds) = pause.components
            var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            var rest = timespec()
            nanosleep(&request, &rest)
        }
        if ring_buffer__consume(ring) > 0 { sink.flush() }
    }

    /// The pause after a drain that found nothing: double the last one, at most `idle`.
    static func nextPause(after last: Duration, busy: Duration, idle: Duration) -> Duration {
        min(max(last * 2, busy), idle)
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
