import CInjector
import Foundation
import MSMArtifacts

/// Is the library a process maps under the provider's file name really this agent's
/// provider? Any process can map a file of that name (in watch-all mode that made it a
/// target: the agent then read a file the process chose, and took its events). The mapped
/// file is opened through /proc/PID/map_files (no path resolution), without blocking,
/// regular files only, at most `maximumSize` bytes, and accepted when it is the installed
/// library itself (same device and inode) or has exactly the embedded library's bytes (a copy
/// placed in a container, or installed there by `exec` of the same build).
struct ProviderIdentity: Sendable {
    enum Verdict: Sendable, Equatable {
        case ours
        case foreign(String)
    }

    /// The provider library is ~100 KiB; a larger file cannot be ours.
    static let maximumSize: UInt64 = 16 << 20

    /// The installed library's device and inode, if installed.
    let installed: (dev: UInt64, ino: UInt64)?
    let embedded: Data

    init(providerDirectory: String, embedded: Data = ProviderIdentity.embeddedLibrary) {
        var info = stat()
        if lstat("\(providerDirectory)/\(MappedFiles.providerFileName)", &info) == 0, (info.st_mode & S_IFMT) == S_IFREG {
            installed = (UInt64(info.st_dev), UInt64(info.st_ino))
        } else {
            installed = nil
        }
        self.embedded = embedded
    }

    static var embeddedLibrary: Data {
        Artifacts.providerFiles.first { $0.path == MappedFiles.providerFileName }?.data ?? Data()
    }

    func verdict(pid: Int32, mapping: ProviderMapping) -> Verdict {
        let path = mapping.mapFile(pid: pid)
        var error = [CChar](repeating: 0, count: 256)
        var size: UInt64 = 0
        let fd = msm_open_regular(path, Self.maximumSize, &size, &error, error.count)
        guard fd >= 0 else {
            let why = String(decoding: error.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return .foreign("\(mapping.path): \(why)")
        }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) == 0, let installed, UInt64(info.st_dev) == installed.dev, UInt64(info.st_ino) == installed.ino {
            return .ours
        }
        guard size == UInt64(embedded.count) else {
            return .foreign("\(mapping.path) is not this agent's provider library (\(size) bytes, ours has \(embedded.count))")
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return .foreign("\(mapping.path): cannot read it") }
            done += n
        }
        return bytes.elementsEqual(embedded) ? .ours
            : .foreign("\(mapping.path) is not this agent's provider library (its contents differ)")
    }
}
