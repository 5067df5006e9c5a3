import Foundation

/// Makes the installed provider directory reachable, at the same path, from a target that
/// lives in another mount namespace (a container, a service with a private /tmp): the files
/// are copied to `/proc/PID/root/<same path>`. Every directory on the way is opened without
/// following symlinks (a container controls its own tree: an absolute symlink there would
/// otherwise resolve in the agent's namespace) and must be root-owned and not writable by
/// others (sticky world-writable directories such as /tmp excepted); directories created
/// here are root-owned 0755, the copy is staged and renamed into place.
public enum ProviderPlacement {
    public enum Outcome: String, Sendable {
        /// The target already sees the very same directory (same namespace or a shared mount).
        case shared
        /// A complete copy was already there.
        case present
        /// The files were copied into the target's mount namespace.
        case copied
    }

    @discardableResult
    public static func place(providerDirectory: String, forPid pid: Int32,
                             files: [(path: String, data: Data)]) throws -> Outcome {
        let marker = "\(providerDirectory)/.complete"
        var local = stat(), remote = stat()
        let root = "/proc/\(pid)/root"
        if stat(marker, &local) == 0, stat(root + marker, &remote) == 0,
           local.st_dev == remote.st_dev, local.st_ino == remote.st_ino {
            return .shared
        }
        let components = providerDirectory.split(separator: "/").map(String.init)
        guard providerDirectory.hasPrefix("/"), let leaf = components.last,
              !components.contains(".."), !components.contains(".") else {
            throw RuntimeError("provider directory \(providerDirectory) must be an absolute, normalised path")
        }
        var dirfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirfd >= 0 else {
            throw RuntimeError("cannot open \(root): \(String(cString: strerror(errno)))")
        }
        defer { close(dirfd) }
        var shown = ""
        for name in components.dropLast() {
            shown += "/" + name
            let next = try openTrustedDirectory(parent: dirfd, name: name, shown: shown, pid: pid)
            close(dirfd)
            dirfd = next
        }
        // Complete copy already there?
        let existing = openat(dirfd, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if existing >= 0 {
            defer { close(existing) }
            try checkTrusted(existing, shown: providerDirectory, pid: pid, allowSticky: false)
            var info = stat()
            if fstatat(existing, ".complete", &info, AT_SYMLINK_NOFOLLOW) == 0 { return .present }
            throw RuntimeError("\(providerDirectory) exists in pid \(pid)'s mount namespace but is incomplete; remove it there and retry")
        }
        let staging = ".staging-\(leaf.prefix(12))-\(getpid())"
        removeTree(parent: dirfd, name: staging)
        guard mkdirat(dirfd, staging, 0o755) == 0 else {
            throw RuntimeError("cannot create \(shown)/\(staging) in pid \(pid)'s mount namespace: \(String(cString: strerror(errno)))")
        }
        do {
            fchmodat(dirfd, staging, 0o755, 0)
            let stagefd = openat(dirfd, staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard stagefd >= 0 else { throw RuntimeError("cannot open the staging directory: \(String(cString: strerror(errno)))") }
            defer { close(stagefd) }
            for file in files + [(path: ".complete", data: Data())] {
                try writeFile(base: stagefd, relativePath: file.path, data: file.data,
                              mode: file.path.hasSuffix(".so") ? 0o755 : 0o644)
            }
            if renameat(dirfd, staging, dirfd, leaf) != 0 {
                let err = errno
                var info = stat()
                let done = fstatat(dirfd, "\(leaf)/.complete", &info, AT_SYMLINK_NOFOLLOW) == 0
                removeTree(parent: dirfd, name: staging)
                if done { return .present }  // another placement won the race
                throw RuntimeError("cannot move the provider into place in pid \(pid)'s mount namespace: \(String(cString: strerror(err)))")
            }
        } catch {
            removeTree(parent: dirfd, name: staging)
            throw error
        }
        return .copied
    }

    private static func openTrustedDirectory(parent: Int32, name: String, shown: String, pid: Int32) throws -> Int32 {
        var fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            if mkdirat(parent, name, 0o755) != 0 && errno != EEXIST {
                throw RuntimeError("cannot create \(shown) in pid \(pid)'s mount namespace: \(String(cString: strerror(errno)))")
            }
            fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 { fchown(fd, 0, 0); fchmod(fd, 0o755) }
        }
        guard fd >= 0 else {
            throw RuntimeError("cannot open \(shown) in pid \(pid)'s mount namespace (\(String(cString: strerror(errno)))); a symlink there is refused")
        }
        do {
            try checkTrusted(fd, shown: shown, pid: pid, allowSticky: true)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    private static func checkTrusted(_ fd: Int32, shown: String, pid: Int32, allowSticky: Bool) throws {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw RuntimeError("cannot stat \(shown) in pid \(pid)'s mount namespace") }
        let writableByOthers = info.st_mode & 0o022 != 0
        let sticky = info.st_mode & S_ISVTX != 0
        guard info.st_uid == 0, !writableByOthers || (allowSticky && sticky) else {
            throw RuntimeError("\(shown) in pid \(pid)'s mount namespace is not owned by root or is writable by others; refusing to place the provider there")
        }
    }

    private static func writeFile(base: Int32, relativePath: String, data: Data, mode: mode_t) throws {
        let parts = relativePath.split(separator: "/").map(String.init)
        guard let name = parts.last, !parts.contains("..") else { throw RuntimeError("bad provider file name \(relativePath)") }
        var dirfd = dup(base)
        defer { close(dirfd) }
        for part in parts.dropLast() {
            if mkdirat(dirfd, part, 0o755) == 0 { fchmodat(dirfd, part, 0o755, 0) }
            let next = openat(dirfd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard next >= 0 else { throw RuntimeError("cannot create directory \(part): \(String(cString: strerror(errno)))") }
            close(dirfd)
            dirfd = next
        }
        let fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw RuntimeError("cannot create \(relativePath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, mode)
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw RuntimeError("cannot write \(relativePath): \(String(cString: strerror(errno)))") }
                offset += n
            }
        }
    }

    /// Removes a staging directory we created (no symlinks followed).
    private static func removeTree(parent: Int32, name: String) {
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 { unlinkat(parent, name, 0); return }
        if let dir = fdopendir(fd) {
            var entries: [(String, Bool)] = []
            while let entry = readdir(dir) {
                let entryName = withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if entryName == "." || entryName == ".." { continue }
                entries.append((entryName, entry.pointee.d_type == UInt8(DT_DIR)))
            }
            for (entryName, isDir) in entries {
                if isDir { removeTree(parent: fd, name: entryName) } else { unlinkat(fd, entryName, 0) }
            }
            closedir(dir)  // closes fd
        } else {
            close(fd)
        }
        unlinkat(parent, name, AT_REMOVEDIR)
    }
}
