import CInjector
import Foundation
import MSMCore

/// A symbol config is code that runs inside every target (expressions; handler modules it
/// names are checked by the provider the same way): like sshd's StrictModes and sudo, the
/// agent reads one only if nobody but root could have written it. The file (symlinks
/// resolved) must be a regular file owned by root and not writable by group or others, and
/// so must every directory above it, a root-owned sticky directory (/tmp) excepted. The
/// bytes parsed are read from the descriptor that was checked.
enum TrustedConfigFile {
    /// The file's text, or a ConfigErrorList naming the problem and the fix.
    static func read(_ path: String) throws(ConfigErrorList) -> String {
        func refuse(_ message: String) -> ConfigErrorList {
            ConfigErrorList([ConfigError(file: path, line: 0, field: "config", message: message)])
        }
        guard let resolved = realpath(path, nil) else {
            throw refuse("cannot read file: \(String(cString: strerror(errno)))")
        }
        let real = String(cString: resolved)
        free(resolved)
        var error = [CChar](repeating: 0, count: 256)
        var size: UInt64 = 0
        let fd = msm_open_regular(real, 16 << 20, &size, &error, error.count)
        guard fd >= 0 else {
            throw refuse("cannot read file: " + String(decoding: error.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw refuse("cannot stat file") }
        if let problem = problem(with: info, directory: false) {
            throw refuse("\(real) \(problem); it runs code in every target, so only root may be able to write it "
                         + "(chown root \(real); chmod go-w \(real))")
        }
        var directory = (real as NSString).deletingLastPathComponent
        while true {
            var dirInfo = stat()
            guard lstat(directory, &dirInfo) == 0 else { throw refuse("cannot stat \(directory)") }
            if let problem = problem(with: dirInfo, directory: true) {
                throw refuse("directory \(directory) \(problem), so others could replace the config; "
                             + "move it under a root-only directory (chown root \(directory); chmod go-w \(directory))")
            }
            if directory == "/" || directory.isEmpty { break }
            directory = (directory as NSString).deletingLastPathComponent
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw refuse("cannot read file: \(String(cString: strerror(errno)))") }
            done += n
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw refuse("the file is not UTF-8 text") }
        return text
    }

    /// Why this file or directory could have been written by someone other than root; nil if not.
    static func problem(with info: stat, directory: Bool) -> String? {
        if info.st_uid != 0 { return "is owned by uid \(info.st_uid), not root" }
        let sticky = info.st_mode & S_ISVTX != 0
        if info.st_mode & 0o022 != 0 && !(directory && sticky) {
            let writers = [info.st_mode & 0o020 != 0 ? "its group" : nil, info.st_mode & 0o002 != 0 ? "others" : nil]
            return "is writable by \(writers.compactMap { $0 }.joined(separator: " and ")) (mode \(String(info.st_mode & 0o7777, radix: 8)))"
        }
        return nil
    }
}
