import CInjector
import Foundation

/// What /proc says about one process, read fresh. (The agent's periodic scan goes through
/// `ProcessScanCache`, which keeps what only changes on execve or a retitle.)
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
        statFields(pid) != nil
    }

    public static func facts(_ pid: Int32) -> ProcessFacts? {
        guard let stat = statFields(pid) else { return nil }
        return ProcessFacts(pid: pid, parent: stat.parent, startTime: stat.startTime, title: title(pid))
    }

    /// Parent and start time from /proc/PID/stat; nil for a process that is gone or a zombie.
    static func statFields(_ pid: Int32) -> (parent: Int32, startTime: UInt64)? {
        statLine(pid).map { ($0.parent, $0.startTime) }
    }

    /// The fields of /proc/PID/stat the agent uses; nil for a process that is gone or a zombie.
    static func statLine(_ pid: Int32) -> StatLine? {
        guard let bytes = readProcBytesOnce("/proc/\(pid)/stat") else { return nil }
        return StatLine(bytes: bytes)
    }

    /// Seconds since the process started (from its start time and /proc/uptime).
    public static func ageSeconds(_ facts: ProcessFacts) -> Double {
        ageSeconds(startTime: facts.startTime, uptime: uptimeSeconds())
    }

    static func ageSeconds(startTime: UInt64, uptime: Double) -> Double {
        uptime - Double(startTime) / clockTicksPerSecond
    }

    /// Seconds since boot (/proc/uptime); 0 when unreadable.
    static func uptimeSeconds() -> Double {
        guard let bytes = readProcBytesOnce("/proc/uptime") else { return 0 }
        return Double(String(decoding: bytes, as: UTF8.self).split(separator: " ").first ?? "") ?? 0
    }

    static let clockTicksPerSecond: Double = {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ticks > 0 ? ticks : 100
    }()

    /// The process title: /proc/PID/cmdline (which setproctitle rewrites, e.g.
    /// "VLLM::EngineCore_DP1"), falling back to comm.
    public static func title(_ pid: Int32) -> String {
        title(arguments: arguments(pid) ?? []) ?? comm(pid)
    }

    /// The title from cmdline's arguments (joined with spaces, at most 200 characters); nil
    /// when there are none (kernel threads, a process that cleared its cmdline).
    static func title(arguments: [String]) -> String? {
        let text = arguments.joined(separator: " ")
        return text.isEmpty ? nil : String(text.prefix(200))
    }

    /// /proc/PID/cmdline split at its NULs (at most `limit` bytes read).
    static func arguments(_ pid: Int32, limit: Int = 64 << 20) -> [String]? {
        readProcBytes("/proc/\(pid)/cmdline", limit: limit).map { data in
            data.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    static func comm(_ pid: Int32) -> String {
        (readProcFile("/proc/\(pid)/comm") ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether one of the process's threads is called `name` (its comm, as set with
    /// prctl(PR_SET_NAME)); nil when its task list cannot be read (gone, or no permission).
    public static func hasThread(_ pid: Int32, named name: String) -> Bool? {
        guard let dir = opendir("/proc/\(pid)/task") else { return nil }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let tid = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            guard tid.first?.isNumber == true,
                  let comm = readProcFile("/proc/\(pid)/task/\(tid)/comm") else { continue }
            if comm.trimmingCharacters(in: .newlines) == name { return true }
        }
        return false
    }

    /// An errno that says nothing about the process (the reader ran out of something).
    public struct ReadFailure: Error, CustomStringConvertible {
        public let errno: Int32
        public var description: String { String(cString: strerror(errno)) }
        /// ENOENT and ESRCH mean the process is gone; anything else is ours.
        static func isGone(_ code: Int32) -> Bool { code == ENOENT || code == ESRCH }
    }

    /// The numeric entries of /proc, or why /proc could not be listed.
    static func listPids() -> Result<[Int32], ReadFailure> {
        guard let dir = opendir("/proc") else { return .failure(ReadFailure(errno: errno)) }
        defer { closedir(dir) }
        var pids: [Int32] = []
        while let entry = readdir(dir) {
            let pid = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { Int32(String(cString: $0)) }
            }
            if let pid { pids.append(pid) }
        }
        return .success(pids)
    }

    /// A stat line (nil: the process is gone or a zombie), or why it could not be read.
    static func readStatLine(_ pid: Int32) -> Result<StatLine?, ReadFailure> {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            return ReadFailure.isGone(code) ? .success(nil) : .failure(ReadFailure(errno: code))
        }
        defer { close(fd) }
        // One read: the kernel generates the line whole (see readProcBytesOnce).
        var buffer = [UInt8](repeating: 0, count: 4096)
        var count: Int
        repeat {
            count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        } while count < 0 && errno == EINTR
        if count < 0 {
            let code = errno
            return ReadFailure.isGone(code) ? .success(nil) : .failure(ReadFailure(errno: code))
        }
        if count == buffer.count { return .success(statLine(pid)) }
        return .success(StatLine(bytes: Array(buffer[0..<count])))
    }

    /// The numeric entries of /proc.
    public static func allPids() -> [Int32] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var pids: [Int32] = []
        while let entry = readdir(dir) {
            let pid = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { Int32(String(cString: $0)) }
            }
            if let pid { pids.append(pid) }
        }
        return pids
    }

    /// Processes running `vllm serve` (the API server: the root of a vLLM process tree).
    public static func vllmServers() -> Set<Int32> {
        Set(allPids().filter { pid in isVllmServe(arguments: arguments(pid, limit: 4096) ?? []) })
    }

    /// `vllm serve …`, also through an interpreter (`python …/bin/vllm serve …`).
    static func isVllmServe(arguments args: [String]) -> Bool {
        guard let serve = args.firstIndex(of: "serve"), serve > 0 else { return false }
        return args[..<serve].contains { $0 == "vllm" || $0.hasSuffix("/vllm") }
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

    /// Why a process in a user namespace that does not map the host's root to its root (a
    /// rootless container) cannot be a target, or nil. Files the agent writes into its mount
    /// namespace are owned by the host's root, which such a namespace shows as an unmapped
    /// uid (65534): its provider rightly refuses a control file root does not own there, and
    /// nothing the agent could write would pass that check without weakening it. A user
    /// namespace made by root that maps 0 to 0 (`unshare -Ur` as root) is fine.
    public static func userNamespaceRefusal(_ pid: Int32) -> String? {
        guard let map = readProcFile("/proc/\(pid)/uid_map"), !rootMapsToRoot(uidMap: map) else { return nil }
        return "pid \(pid) runs in a user namespace where the host's root is not root (a rootless container): "
            + "not supported, its provider cannot trust files the host's root writes; run it without a user "
            + "namespace, or with the host's uid 0 mapped to 0, to collect from it"
    }

    /// /proc/PID/uid_map lines "inside outside count": does host uid 0 map to uid 0?
    static func rootMapsToRoot(uidMap: String) -> Bool {
        for line in uidMap.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt64($0) }
            guard f.count == 3, f[2] > 0 else { continue }
            if f[1] == 0 { return f[0] == 0 }  // the range that holds host uid 0 starts there
        }
        return false
    }

    /// The mapping of the provider library, if the process has the provider loaded.
    public static func providerMapping(of pid: Int32, fileName: String = "_msm_probe.abi3.so") -> ProviderMapping? {
        mappedFiles(pid, providerFileName: fileName)?.provider
    }

    /// What /proc/PID/maps says about the provider and Python; nil for a process that is gone.
    static func mappedFiles(_ pid: Int32, providerFileName: String = MappedFiles.providerFileName) -> MappedFiles? {
        readProcFile("/proc/\(pid)/maps").map { MappedFiles(maps: $0, providerFileName: providerFileName) }
    }
}

/// The fields of one /proc/PID/stat line the agent uses.
struct StatLine: Equatable {
    let state: Character
    let parent: Int32
    let startTime: UInt64
    /// The executable's name, or what the process set with prctl(PR_SET_NAME) (setproctitle
    /// does): it changes on execve and on a retitle.
    let comm: String

    /// nil for a malformed line and for a zombie or dead process (Z, X: exited, its /proc
    /// entry not yet reaped).
    init?(parsing line: String) {
        self.init(bytes: Array(line.utf8))
    }

    /// Parses the bytes as read: the scan parses every process's line 4 times a second, so it
    /// works on bytes (String's Character view costs ~10× more here).
    init?(bytes: [UInt8]) {
        guard let open = bytes.firstIndex(of: UInt8(ascii: "(")), let close = bytes.lastIndex(of: UInt8(ascii: ")")),
              open < close else { return nil }
        // Fields after "(comm)": state ppid ... starttime is field 22 overall, 20th after comm.
        var state: UInt8?, parent: UInt64?, start: UInt64?
        var field = 0, index = close + 1
        while field <= 19 {
            while index < bytes.count, bytes[index] == UInt8(ascii: " ") { index += 1 }
            let first = index
            while index < bytes.count, bytes[index] != UInt8(ascii: " "), bytes[index] != UInt8(ascii: "\n") { index += 1 }
            guard index > first else { return nil }  // the line ended before starttime
            switch field {
            case 0: state = index - first == 1 ? bytes[first] : nil
            case 1: parent = Self.decimal(bytes[first..<index])
            case 19: start = Self.decimal(bytes[first..<index])
            default: break
            }
            field += 1
        }
        guard let state, let parent, parent <= UInt64(Int32.max), let start,
              state != UInt8(ascii: "Z"), state != UInt8(ascii: "X") else { return nil }
        self.state = Character(Unicode.Scalar(state))
        self.parent = Int32(parent)
        startTime = start
        comm = String(decoding: bytes[(open + 1)..<close], as: UTF8.self)
    }

    /// An unsigned decimal; nil for anything else or an overflow.
    private static func decimal(_ digits: ArraySlice<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        for byte in digits {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}

/// Where a process maps the provider library (the first mapping of the file).
public struct ProviderMapping: Sendable, Equatable, Encodable {
    /// The path as the process sees it (without the kernel's " (deleted)" suffix).
    public let path: String
    public let start: UInt64
    public let end: UInt64
    public let inode: UInt64

    /// /proc/PID/map_files/START-END: the very file mapped, in any mount namespace, even
    /// after it was replaced or removed on disk; opening it resolves no path the process chose.
    public func mapFile(pid: Int32) -> String {
        "/proc/\(pid)/map_files/\(String(start, radix: 16))-\(String(end, radix: 16))"
    }
}

/// One pass over /proc/PID/maps (parsed by the one maps parser, Sources/CInjector/maps.c):
/// the provider library's mapping and whether Python is mapped.
struct MappedFiles: Equatable {
    static let providerFileName = "_msm_probe.abi3.so"

    let provider: ProviderMapping?
    /// A mapped file with "python" in its name (python3.11, libpython3.12.so.1.0, …). Without
    /// one the process cannot be CPython (the injector finds the interpreter by these names).
    let mapsPython: Bool

    /// The provider library's path as the process sees it.
    var providerLibrary: String? { provider?.path }

    init(maps: String, providerFileName: String = MappedFiles.providerFileName) {
        var parsed = msm_maps()
        var utf8 = Array(maps.utf8)
        let rc = utf8.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { msm_maps_parse($0.baseAddress, $0.count, 1, 1 << 20, &parsed) }
        }
        defer { msm_maps_free(&parsed) }
        var provider: ProviderMapping?
        var python = false
        if rc == 0 {
            for index in 0..<parsed.n {
                var mapping = parsed.v[index]
                var path = withUnsafeBytes(of: &mapping.path) { raw in
                    String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                }
                if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
                let name = path.split(separator: "/").last ?? ""
                if provider == nil, name == providerFileName {
                    provider = ProviderMapping(path: path, start: mapping.start, end: mapping.end, inode: mapping.inode)
                }
                if !python, name.contains("python") { python = true }
            }
        }
        self.provider = provider
        mapsPython = python
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

/// Reads a small /proc file (stat, uptime) with one read(2): these are generated whole on
/// the first read, so a read shorter than the buffer has everything. Falls back to
/// `readProcBytes` when the buffer was filled.
func readProcBytesOnce(_ path: String, capacity: Int = 4096) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: capacity)
    var count: Int
    repeat {
        count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    } while count < 0 && errno == EINTR
    if count < 0 { return nil }
    if count == capacity { return readProcBytes(path) }
    return Array(buffer[0..<count])
}

func readProcFile(_ path: String) -> String? {
    readProcBytes(path).map { String(decoding: $0, as: UTF8.self) }
}
