import Foundation

/// The agent's view of /proc from one scan to the next. Each `refresh` lists /proc and reads
/// every process's stat line (parent, start time, comm; one read each); cmdline and maps are
/// read when asked for and only as often as `ProcessRecheckPolicy` says. Entries are keyed by
/// pid and start time: a reused pid is a new process, and a process that is gone (or a
/// zombie) is forgotten at the next refresh.
struct ProcessScanCache {
    struct Entry {
        var stat: StatLine
        /// Seconds since the process started, at the last refresh.
        var ageSeconds: Double = 0
        /// cmdline as of the last read, and comm at that read.
        var title: String?
        var isVllmServe = false
        var argumentsComm: String?
        var argumentsDue = true
        /// maps as of the last read, comm and age at that read.
        var providerMapping: ProviderMapping?
        var mapsVerdict: ProcessRecheckPolicy.MapsVerdict?
        var mapsComm: String?
        var mapsReadAtAge: Double = 0
        var mapsDue = true

        init(stat: StatLine) { self.stat = stat }
    }

    var policy = ProcessRecheckPolicy()
    private(set) var entries: [Int32: Entry] = [:]

    /// Lists /proc, reads every stat line and decides which cmdline and maps are due. When
    /// /proc cannot be listed, or a stat line cannot be read for another reason than the
    /// process being gone (EMFILE, ENFILE, ENOMEM), nothing changes and the error is returned.
    mutating func refresh() -> String? {
        let uptime = ProcessTable.uptimeSeconds()
        var next: [Int32: Entry] = [:]
        let listing: [Int32]
        switch ProcessTable.listPids() {
        case let .success(pids): listing = pids
        case let .failure(error): return "listing /proc: \(error)"
        }
        for pid in listing {
            let stat: StatLine
            switch ProcessTable.readStatLine(pid) {
            case let .success(line?): stat = line
            case .success(nil): continue  // gone, or a zombie
            case let .failure(error): return "reading /proc/\(pid)/stat: \(error)"
            }
            var entry = entries[pid].flatMap { $0.stat.startTime == stat.startTime ? $0 : nil } ?? Entry(stat: stat)
            entry.stat = stat
            let age = ProcessTable.ageSeconds(startTime: stat.startTime, uptime: uptime)
            entry.ageSeconds = age
            entry.argumentsDue = policy.rereadArguments(readBefore: entry.argumentsComm != nil,
                                                        commChanged: entry.argumentsComm != stat.comm,
                                                        ageSeconds: age)
            entry.mapsDue = policy.rereadMaps(last: entry.mapsVerdict, commChanged: entry.mapsComm != stat.comm,
                                              ageSeconds: age, readAtAgeSeconds: entry.mapsReadAtAge)
            next[pid] = entry
        }
        entries = next
        return nil
    }

    /// The start time of a live process seen by the last refresh.
    func startTime(of pid: Int32) -> UInt64? { entries[pid]?.stat.startTime }

    func parent(of pid: Int32) -> Int32? { entries[pid]?.stat.parent }

    /// `roots` (those alive) and all their descendants, from the last refresh.
    func descendants(of roots: Set<Int32>) -> Set<Int32> {
        var children: [Int32: [Int32]] = [:]
        for (pid, entry) in entries { children[entry.stat.parent, default: []].append(pid) }
        var result = Set<Int32>()
        var queue = roots.filter { entries[$0] != nil }
        while let pid = queue.popFirst() {
            guard result.insert(pid).inserted else { continue }
            queue.formUnion(children[pid] ?? [])
        }
        return result
    }

    /// The title (cmdline, else comm), as `ProcessTable.title` gives it.
    mutating func title(of pid: Int32) -> String {
        readArgumentsIfDue(pid)
        guard let entry = entries[pid] else { return "" }
        return entry.title ?? entry.stat.comm
    }

    /// Processes running `vllm serve`.
    mutating func vllmServers() -> Set<Int32> {
        Set(entries.keys.filter { pid in
            readArgumentsIfDue(pid)
            return entries[pid]?.isVllmServe == true
        })
    }

    /// Processes that have the provider library mapped.
    mutating func providerProcesses() -> Set<Int32> {
        Set(entries.keys.filter { pid in
            readMapsIfDue(pid)
            return entries[pid]?.providerMapping != nil
        })
    }

    private mutating func readArgumentsIfDue(_ pid: Int32) {
        guard var entry = entries[pid], entry.argumentsDue else { return }
        // One chunk of cmdline: `vllm serve` is among the first arguments, a title is 200 characters.
        let arguments = ProcessTable.arguments(pid, limit: 65536) ?? []
        entry.title = ProcessTable.title(arguments: arguments)
        entry.isVllmServe = ProcessTable.isVllmServe(arguments: arguments)
        entry.argumentsComm = entry.stat.comm
        entry.argumentsDue = false
        entries[pid] = entry
    }

    private mutating func readMapsIfDue(_ pid: Int32) {
        guard var entry = entries[pid], entry.mapsDue else { return }
        let maps = ProcessTable.mappedFiles(pid)
        entry.providerMapping = maps?.provider
        entry.mapsVerdict = maps.map { $0.provider != nil ? .provider : $0.mapsPython ? .python : .noPython }
        entry.mapsComm = entry.stat.comm
        entry.mapsReadAtAge = entry.ageSeconds
        entry.mapsDue = false
        entries[pid] = entry
    }
}
