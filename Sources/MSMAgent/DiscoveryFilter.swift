import Foundation

/// Which discovered processes watch-all mode (`on`/`run` without --pid) may take as targets:
/// `--only-uid` and `--only-cgroup` narrow it to processes of given users or under given
/// cgroups (a node that runs vLLM for one service account, or in one slice). Processes named
/// with --pid, and their descendants, are targets whatever this says. Pure except `admits(pid:)`.
public struct DiscoveryFilter: Codable, Sendable, Equatable {
    /// Real uids a discovered process may run as (empty: any).
    public var uids: Set<UInt32>
    /// cgroup path prefixes, as /proc/PID/cgroup shows them (e.g. "/system.slice/vllm.service");
    /// a process is under one when any of its cgroup paths is the prefix or below it. Empty: any.
    public var cgroupPrefixes: [String]

    public init(uids: Set<UInt32> = [], cgroupPrefixes: [String] = []) {
        self.uids = uids
        self.cgroupPrefixes = cgroupPrefixes.map { $0.count > 1 && $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
    }

    public var isOpen: Bool { uids.isEmpty && cgroupPrefixes.isEmpty }

    /// The real uid (first field of the Uid: line) and the cgroup paths of a process.
    public func admits(uid: UInt32?, cgroups: [String]) -> Bool {
        if !uids.isEmpty {
            guard let uid, uids.contains(uid) else { return false }
        }
        if !cgroupPrefixes.isEmpty {
            return cgroups.contains { path in
                cgroupPrefixes.contains { prefix in prefix == "/" || path == prefix || path.hasPrefix(prefix + "/") }
            }
        }
        return true
    }

    public func admits(pid: Int32) -> Bool {
        if isOpen { return true }
        return admits(uid: Self.realUid(status: readProcFile("/proc/\(pid)/status") ?? ""),
                      cgroups: Self.cgroupPaths(readProcFile("/proc/\(pid)/cgroup") ?? ""))
    }

    static func realUid(status: String) -> UInt32? {
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { UInt32($0) }
    }

    /// "hierarchy-id:controllers:path" per line (cgroup v1 and v2 alike): the paths.
    static func cgroupPaths(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            return parts.count == 3 ? String(parts[2]) : nil
        }
    }

    public var description: String {
        var parts: [String] = []
        if !uids.isEmpty { parts.append("uid " + uids.sorted().map(String.init).joined(separator: ", ")) }
        if !cgroupPrefixes.isEmpty { parts.append("cgroup " + cgroupPrefixes.joined(separator: ", ")) }
        return parts.isEmpty ? "every process" : parts.joined(separator: "; ")
    }
}
