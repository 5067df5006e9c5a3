import Foundation

/// When the agent's scan reads a process's cmdline and maps again (the stat line is read on
/// every scan). Pure: the decisions only, `ProcessScanCache` does the reading.
///
/// * cmdline (title, `vllm serve`): changes on execve and when the process retitles itself.
///   Both change comm in the stat line (execve sets it to the new program's name; setproctitle,
///   which vLLM uses for "VLLM::EngineCore_DP1", also calls prctl(PR_SET_NAME)). It is read
///   again when comm changed, and on every scan while the process is young: an exec of a
///   program with the same name, or a title set from a thread other than the main one,
///   leaves comm alone, and both happen right after start.
/// * maps (provider library, Python): a process that has the provider keeps it (a CPython
///   extension is never unloaded): not read again until comm changes. A process with Python
///   mapped may load the provider at any time: read on every scan. A process without Python
///   cannot load it unless it execs (comm changes) or embeds an interpreter later: read on
///   every scan while young, then every `noPythonInterval` seconds.
struct ProcessRecheckPolicy: Sendable, Equatable {
    var youngSeconds: Double = 3
    var noPythonInterval: Double = 30

    /// What the last read of a process's maps found.
    enum MapsVerdict: Sendable, Equatable {
        case provider
        case python
        case noPython
    }

    /// - Parameters:
    ///   - readBefore: cmdline was read for this process (pid and start time) before.
    ///   - commChanged: comm differs from the one seen when cmdline was last read.
    ///   - ageSeconds: the process's age now.
    func rereadArguments(readBefore: Bool, commChanged: Bool, ageSeconds: Double) -> Bool {
        !readBefore || commChanged || ageSeconds < youngSeconds
    }

    /// - Parameters:
    ///   - last: the verdict of the last read (nil: never read for this process).
    ///   - commChanged: comm differs from the one seen at that read.
    ///   - ageSeconds: the process's age now.
    ///   - readAtAgeSeconds: the process's age at that read.
    func rereadMaps(last: MapsVerdict?, commChanged: Bool, ageSeconds: Double, readAtAgeSeconds: Double) -> Bool {
        guard let last, !commChanged else { return true }
        switch last {
        case .provider: return false
        case .python: return true
        case .noPython: return ageSeconds < youngSeconds || ageSeconds - readAtAgeSeconds >= noPythonInterval
        }
    }
}
