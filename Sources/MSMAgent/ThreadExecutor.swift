import Foundation

/// A serial executor with a thread of its own, for an actor that makes blocking calls.
///
/// The agent actor reads /proc files of busy processes and registers uprobes, calls that wait
/// in the kernel on a target's memory-map lock (seconds under load were measured). On the
/// cooperative pool, which has one thread per core (two on a small VM), two such waits stall
/// every other task: the aggregator, /metrics, the control socket. On this thread they stall
/// the agent actor only. (Dispatch's DispatchSerialQueue executor is not available on Linux.)
final class ThreadExecutor: SerialExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    /// Starts the thread; it lives as long as the process (one agent per process).
    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedSerialExecutor()) }
        }
    }
}
