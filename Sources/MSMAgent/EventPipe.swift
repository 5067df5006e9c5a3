import Foundation
import MSMCore

/// Carries ring-buffer records from the reader thread to the aggregation actor, in order.
/// Records are decoded on the reader thread and handed over once per drain, so the actor
/// sees one batch per few milliseconds instead of one hop per event.
public final class EventPipe: RingBufferSink, @unchecked Sendable {
    public let batches: AsyncStream<[ProviderEvent]>
    private let continuation: AsyncStream<[ProviderEvent]>.Continuation
    // Touched only by the reader thread.
    private var pending: [ProviderEvent] = []

    public init() {
        (batches, continuation) = AsyncStream.makeStream(of: [ProviderEvent].self, bufferingPolicy: .unbounded)
        pending.reserveCapacity(4096)
    }

    public func record(_ bytes: UnsafeRawBufferPointer) {
        pending.append(EventDecoder.decode(bytes))
    }

    public func flush() {
        guard !pending.isEmpty else { return }
        continuation.yield(pending)
        pending = []
        pending.reserveCapacity(4096)
    }

    public func finish() { continuation.finish() }
}
