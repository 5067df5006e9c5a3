import Foundation

/// What /proc says about one process. Read fresh on every scan; nothing here is cached.
public struct ProcessFacts: Sendable, Equatable {
    public let pid: Int32
    public let parent: Int32
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, it
    /// identifies a process even when its pid is reused.
    public let startTime: UInt64
    public let title: String
}

/// Reads the process tree from /proc.
public enum ProcessTable {
    /// True for a live process; a zombie (exited, not yet reaped by its parent) is gone.
    public static func exists(_ pid: Int32) -> Bool {
        facts(pid) != nil
    }

    public static func facts(_ pid: Int32) -> ProcessFacts? {
        guard let stat = statFields(pid) else { return nil }
        return ProcessFacts(pid: pid, parent: stat.parent, startTime: stat.startTime, title: title(pid))
    }

    /// Parent and start time from /proc/PID/stat; nil for a process that is gone or a zombie.
    static func statFields(_ pid: Int32) -> (parent: Int32, startTime: UInt64)? {
        guard let stat = readProcFile("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": state ppid ... starttime is field 22 overall, 20th after comm.
        let rest = stat[stat.index(after: close)...].split(separator: " ")
        guard rest.count > 19, let parent = Int32(rest[1]), let start = UInt64(rest[19]) else { return nil }
        // Z: zombie, X: dead — the process has exited even though its /proc entry remains.
        guard rest[0] != "Z", rest[0] != "X" else { return nil }
        return (parent, start)
    }

    /// Seconds since the process started (from its start time and /proc/uptime).
    public static func ageSeconds(_ facts: ProcessFacts) -> Double {
        guard let uptimeText = readProcFile("/proc/uptime"),
              let uptime = Double(uptimeText.split(separator: " ").first ?? "") else { return 0 }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return uptime - Double(facts.startTime) / (ticks > 0 ? ticks : 100)
    }

    /// The process title: /proc/PID/cmdline (which setproctitle rewrites, e.g.
    /// "VLLM::EngineCore_DP1"), falling back to comm.
    public static func title(_ pid: Int32) -> String {
        if let data = readProcBytes("/proc/\(pid)/cmdline"), !data.isEmpty {
            let parts = data.split(separator: 0, omittingEmptySubsequences: true)
            let text = parts.map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
            if !text.isEmpty { return String(text.prefix(200)) }
        }
        let comm = readProcFile("/proc/\(pid)/comm") ?? ""
        return comm.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public static func allPids() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { Int32($0) }
    }

    /// Processes running `vllm serve` (the API server: the root of a vLLM process tree).
    public static func vllmServers() -> Set<Int32> {
        Set(allPids().filter { pid in
            guard let bytes = readProcBytes("/proc/\(pid)/cmdline", limit: 4096) else { return false }
            let args = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard let serve = args.firstIndex(of: "serve"), serve > 0 else { return false }
            return args[..<serve].contains { $0 == "vllm" || $0.hasSuffix("/vllm") }
        })
    }

    /// `roots` and every live descendant of them.
    public static func descendants(of roots: Set<Int32>) -> Set<Int32> {
        var children: [Int32: [Int32]] = [:]
        for pid in allPids() {
            if let stat = statFields(pid) { children[stat.parent, default: []].append(pid) }
        }
        var result = Set<Int32>()
        var queue = Array(roots.filter(exists))
        while let pid = queue.popLast() {
            guard result.insert(pid).inserted else { continue }
            queue.append(contentsOf: children[pid] ?? [])
        }
        return result
    }

    /// The path (as the process sees it) of the mapped provider library, if the process has
    /// the provider loaded.
    public static func providerLibrary(of pid: Int32, fileName: String = "_msm_probe.abi3.so") -> String? {
        guard let maps = readProcFile("/proc/\(pid)/maps") else { return nil }
        for line in maps.split(separator: "\n") where line.hasSuffix(fileName) || line.hasSuffix(fileName + " (deleted)") {
            guard let slash = line.firstIndex(of: "/") else { continue }
            var path = String(line[slash...])
            if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
            return path
        }
        return nil
    }
}

/// Reads a /proc file to its end. /proc files report a size of 0, so readers that trust
/// stat's size (or read one page) see nothing or a prefix; this loops until EOF.
func readProcBytes(_ path: String, limit: Int = 64 << 20) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while result.count < limit {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        if count <= 0 { break }
        result.append(contentsOf: chunk[0..<count])
    }
    return result
}

func readProcFile(_ path: String) -> String? {
    readProcBytes(path).map { String(decoding: $0, as: UTF8.self) }
}
