import Foundation

/// Files inside a target's root directory (`/proc/PID/root`): the one way the agent reads
/// or writes there (provider copies, the control-file copy, the PEP 768 bootstrap script).
///
/// A container owns its tree: any directory or file name on the way may be a symlink, and
/// an absolute symlink reached through `/proc/PID/root` resolves in the *agent's* root, on
/// the host. So nothing here resolves a path: every directory is opened one component at a
/// time from the root's descriptor with `O_NOFOLLOW | O_DIRECTORY` (`..` and `.` refused),
/// files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a fresh name, modes are set
/// with `fchmod` on the open descriptor, and a file replaces another only by `renameat`
/// (which replaces a symlink, never follows it). A symlink anywhere is an error that names
/// it. Root's privileges are not needed to be fooled by a path: they are only used on
/// descriptors that were checked.
struct TargetRoot {
    let pid: Int32

    /// Directories the agent trusts for what it writes: owned by root and writable by nobody
    /// else (sticky world-writable directories such as /tmp allowed on the way, where
    /// `allowSticky`).
    enum Trust {
        case rootOnly(allowSticky: Bool)
        case any
    }

    /// Opens the absolute directory `path` inside the target's root; with `create`, missing
    /// directories are made root-owned 0755. Each directory on the way must pass `trust`.
    func directory(_ path: String, create: Bool, trust: Trust) throws -> TargetDirectory {
        let parts = path.split(separator: "/").map(String.init)
        guard path.hasPrefix("/"), !parts.contains(".."), !parts.contains(".") else {
            throw RuntimeError("\(path) is not an absolute, normalised path")
        }
        let rootfd = open("/proc/\(pid)/root", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootfd >= 0 else {
            throw RuntimeError("cannot open the root directory of pid \(pid): \(String(cString: strerror(errno)))")
        }
        var current = TargetDirectory(fd: rootfd, pid: pid, shown: "/")
        for (index, name) in parts.enumerated() {
            let last = index == parts.count - 1
            current = try current.subdirectory(name, create: create, trust: last ? trust : Self.wayTrust(trust))
        }
        return current
    }

    private static func wayTrust(_ trust: Trust) -> Trust {
        switch trust {
        case .rootOnly: .rootOnly(allowSticky: true)
        case .any: .any
        }
    }
}

/// An open directory inside a target's root (see TargetRoot). Not Sendable: one owner.
final class TargetDirectory {
    let fd: Int32
    let pid: Int32
    /// The path as the target sees it, for messages.
    let shown: String

    init(fd: Int32, pid: Int32, shown: String) {
        self.fd = fd
        self.pid = pid
        self.shown = shown
    }

    deinit { close(fd) }

    private func describe(_ name: String) -> String {
        "\(shown == "/" ? "" : shown)/\(name) in pid \(pid)'s root"
    }

    private static func validName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/")
    }

    func subdirectory(_ name: String, create: Bool, trust: TargetRoot.Trust) throws -> TargetDirectory {
        guard Self.validName(name) else { throw RuntimeError("bad directory name \(name)") }
        var child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if child < 0 && errno == ENOENT && create {
            if mkdirat(fd, name, 0o755) != 0 && errno != EEXIST {
                throw RuntimeError("cannot create \(describe(name)): \(String(cString: strerror(errno)))")
            }
            child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child >= 0 {
                var info = stat()
                // Made by us just now (empty, ours): root-owned 0755 whatever the umask.
                if fstat(child, &info) == 0, info.st_nlink <= 2 { fchown(child, 0, 0); fchmod(child, 0o755) }
            }
        }
        guard child >= 0 else {
            let err = errno
            var info = stat()
            if fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
                throw RuntimeError("\(describe(name)) is a symlink; refusing to follow it")
            }
            throw RuntimeError("cannot open \(describe(name)): \(String(cString: strerror(err)))")
        }
        let directory = TargetDirectory(fd: child, pid: pid, shown: shown == "/" ? "/\(name)" : "\(shown)/\(name)")
        try directory.check(trust)
        return directory
    }

    func check(_ trust: TargetRoot.Trust) throws {
        guard case let .rootOnly(allowSticky) = trust else { return }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw RuntimeError("cannot stat \(shown) in pid \(pid)'s root") }
        let writableByOthers = info.st_mode & 0o022 != 0
        let sticky = info.st_mode & S_ISVTX != 0
        guard info.st_uid == 0, !writableByOthers || (allowSticky && sticky) else {
            throw RuntimeError("\(shown) in pid \(pid)'s root is not owned by root or is writable by others")
        }
    }

    /// lstat of an entry (nil if absent).
    func entry(_ name: String) -> stat? {
        var info = stat()
        return fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 ? info : nil
    }

    /// Creates `name` (which must not exist) with `data` and `mode`.
    func createFile(_ name: String, data: Data, mode: mode_t) throws {
        guard Self.validName(name) else { throw RuntimeError("bad file name \(name)") }
        let file = openat(fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard file >= 0 else { throw RuntimeError("cannot create \(describe(name)): \(String(cString: strerror(errno)))") }
        defer { close(file) }
        fchown(file, 0, 0)
        fchmod(file, mode)
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < raw.count {
                let n = write(file, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw RuntimeError("cannot write \(describe(name)): \(String(cString: strerror(errno)))") }
                offset += n
            }
        }
    }

    /// Replaces `name` atomically: a new file under a fresh name, then renameat over it.
    func replaceFile(_ name: String, data: Data, mode: mode_t) throws {
        guard Self.validName(name) else { throw RuntimeError("bad file name \(name)") }
        // A staging name the target cannot guess ahead of time; if it planted something
        // there anyway, O_EXCL refuses and another name is tried.
        var staging = ""
        for attempt in 0..<8 {
            let candidate = ".\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).\(attempt)"
            if entry(candidate) == nil {
                staging = candidate
                break
            }
        }
        guard !staging.isEmpty else { throw RuntimeError("cannot pick a staging name for \(describe(name))") }
        try createFile(staging, data: data, mode: mode)
        guard renameat(fd, staging, fd, name) == 0 else {
            let err = errno
            unlinkat(fd, staging, 0)
            throw RuntimeError("cannot replace \(describe(name)): \(String(cString: strerror(err)))")
        }
    }

    /// Removes the entry `name` (a file, or the symlink itself), if present.
    func remove(_ name: String) {
        guard Self.validName(name) else { return }
        unlinkat(fd, name, 0)
    }

    /// Removes a directory tree we created (no symlink is followed).
    func removeTree(_ name: String) {
        guard Self.validName(name) else { return }
        let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if child < 0 { unlinkat(fd, name, 0); return }
        let directory = TargetDirectory(fd: child, pid: pid, shown: "\(shown)/\(name)")
        for (entryName, isDirectory) in directory.entries() {
            if isDirectory { directory.removeTree(entryName) } else { unlinkat(child, entryName, 0) }
        }
        unlinkat(fd, name, AT_REMOVEDIR)
    }

    /// Names in this directory and whether each is a directory (not followed).
    func entries() -> [(String, Bool)] {
        let copy = dup(fd)
        guard copy >= 0, let dir = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            return []
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var result: [(String, Bool)] = []
        while let entry = readdir(dir) {
            let entryName = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if entryName == "." || entryName == ".." { continue }
            result.append((entryName, entry.pointee.d_type == UInt8(DT_DIR)))
        }
        return result
    }

    /// Renames `from` to `to` within this directory (never follows a symlink).
    func rename(_ from: String, to: String) throws {
        guard renameat(fd, from, fd, to) == 0 else {
            throw RuntimeError("cannot rename \(describe(from)) to \(to): \(String(cString: strerror(errno)))")
        }
    }
}
