import Foundation
import MSMArtifacts

/// The agent's root-owned runtime directory (default /run/ms-service-metric, or
/// $MS_SERVICE_METRIC_RUNTIME_DIR): pid file, control socket, log, control file, provider.
public struct RuntimeDirectory: Sendable {
    public let path: String

    public static var defaultPath: String {
        ProcessInfo.processInfo.environment["MS_SERVICE_METRIC_RUNTIME_DIR"] ?? "/run/ms-service-metric"
    }

    public init(path: String = RuntimeDirectory.defaultPath) { self.path = path }

    public var pidFile: String { "\(path)/agent.pid" }
    public var socket: String { "\(path)/agent.sock" }
    public var logFile: String { "\(path)/agent.log" }
    public var controlFile: String { "\(path)/control.json" }
    public var providerDirectory: String { "\(path)/provider/\(Artifacts.providerHash)" }

    /// Creates the directory (0755, root) or checks that an existing one is safe: owned by
    /// root and writable by nobody else. Providers trust files under it, so a directory a
    /// local user could write would let that user instrument other users' processes.
    public func prepare() throws {
        try makeTrustedDirectory(path)
    }

    /// Installs the provider files (native library, Python package, bootstrap) into
    /// `provider/<content hash>/`. A new build gets a new directory, so a library a running
    /// process has mapped is never overwritten.
    @discardableResult
    public func installProvider() throws -> String {
        try prepare()
        try makeTrustedDirectory("\(path)/provider")
        let target = providerDirectory
        if FileManager.default.fileExists(atPath: "\(target)/.complete") { return target }
        let staging = "\(path)/provider/.staging-\(getpid())"
        try? FileManager.default.removeItem(atPath: staging)
        for file in Artifacts.providerFiles {
            let destination = "\(staging)/\(file.path)"
            let parent = (destination as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
            let mode = file.path.hasSuffix(".so") ? 0o755 : 0o644
            guard FileManager.default.createFile(atPath: destination, contents: file.data,
                                                 attributes: [.posixPermissions: mode]) else {
                throw RuntimeError("cannot write \(destination)")
            }
        }
        FileManager.default.createFile(atPath: "\(staging)/.complete", contents: Data(), attributes: [.posixPermissions: 0o644])
        chmod(staging, 0o755)
        if rename(staging, target) != 0 {
            try? FileManager.default.removeItem(atPath: staging)
            // Another agent or exec installed the same content meanwhile.
            guard FileManager.default.fileExists(atPath: "\(target)/.complete") else {
                throw RuntimeError("cannot install the provider into \(target): \(String(cString: strerror(errno)))")
            }
        }
        return target
    }

    /// This build's provider directory if it is installed and safe to load: complete, and it
    /// and every directory above it up to the runtime directory's parent root-owned and not
    /// writable by others (lstat: no symlink taken). nil otherwise.
    public func installedProviderDirectory() -> String? {
        var path = providerDirectory
        var info = stat()
        guard lstat("\(path)/.complete", &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        while path.count > 1 {
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == 0,
                  info.st_mode & 0o022 == 0 || (info.st_mode & S_ISVTX != 0 && path != providerDirectory) else { return nil }
            if path == self.path { return providerDirectory }
            path = (path as NSString).deletingLastPathComponent
        }
        return nil
    }

    /// The generation in the control file an earlier agent left (0: none or unreadable).
    /// A new agent continues after it: a provider that never saw the semaphore drop between
    /// the two agents (a restart within its 250 ms poll) still holds the old generation, and
    /// re-applies (and re-announces its series) only when the number changes.
    public func previousGeneration() -> UInt64 {
        guard let data = FileManager.default.contents(atPath: controlFile),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let number = object["generation"] as? NSNumber, number.int64Value > 0
        else { return 0 }
        return number.uint64Value
    }

    /// Writes the control file atomically (temp file + rename), 0644 root.
    public func writeControlFile(_ data: Data) throws {
        let temp = "\(controlFile).tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temp, contents: data, attributes: [.posixPermissions: 0o644]) else {
            throw RuntimeError("cannot write \(temp)")
        }
        guard rename(temp, controlFile) == 0 else {
            throw RuntimeError("cannot replace \(controlFile): \(String(cString: strerror(errno)))")
        }
    }

    private func makeTrustedDirectory(_ directory: String) throws {
        var info = stat()
        if lstat(directory, &info) != 0 {
            guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                throw RuntimeError("cannot create \(directory): \(String(cString: strerror(errno)))")
            }
            chmod(directory, 0o755)
            guard lstat(directory, &info) == 0 else { throw RuntimeError("cannot stat \(directory)") }
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR else {
            throw RuntimeError("\(directory) is not a directory (refusing to use it)")
        }
        guard info.st_uid == 0, info.st_mode & 0o022 == 0 else {
            throw RuntimeError("\(directory) must be owned by root and writable only by root (chown root \(directory); chmod go-w \(directory))")
        }
    }
}

public struct RuntimeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
