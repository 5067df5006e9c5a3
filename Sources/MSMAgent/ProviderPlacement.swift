import Foundation

/// Makes the installed provider directory reachable, at the same path, from a target that
/// lives in another mount namespace (a container, a service with a private /tmp): the files
/// are copied to the same path inside the target's root, through TargetRoot (no symlink is
/// followed; every directory on the way must be root-owned and not writable by others,
/// sticky world-writable ones such as /tmp excepted); directories created here are
/// root-owned 0755, the copy is staged and renamed into place.
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
        let root = TargetRoot(pid: pid)
        let parentPath = (providerDirectory as NSString).deletingLastPathComponent
        let leaf = (providerDirectory as NSString).lastPathComponent
        // The same directory (same namespace or a shared mount): nothing to copy.
        var local = stat()
        if stat("\(providerDirectory)/.complete", &local) == 0,
           let parent = try? root.directory(parentPath, create: false, trust: .rootOnly(allowSticky: true)),
           let mine = try? parent.subdirectory(leaf, create: false, trust: .rootOnly(allowSticky: false)),
           let marker = mine.entry(".complete"), marker.st_dev == local.st_dev, marker.st_ino == local.st_ino {
            return .shared
        }
        let parent = try root.directory(parentPath, create: true, trust: .rootOnly(allowSticky: true))
        if parent.entry(leaf) != nil {
            let existing = try parent.subdirectory(leaf, create: false, trust: .rootOnly(allowSticky: false))
            if existing.entry(".complete") != nil { return .present }
            throw RuntimeError("\(providerDirectory) exists in pid \(pid)'s mount namespace but is incomplete; remove it there and retry")
        }
        let staging = ".staging-\(leaf.prefix(12))-\(getpid())"
        parent.removeTree(staging)
        do {
            let stage = try parent.subdirectory(staging, create: true, trust: .rootOnly(allowSticky: false))
            for file in files + [(path: ".complete", data: Data())] {
                var directory = stage
                let parts = file.path.split(separator: "/").map(String.init)
                for part in parts.dropLast() {
                    directory = try directory.subdirectory(part, create: true, trust: .rootOnly(allowSticky: false))
                }
                try directory.createFile(parts.last ?? "", data: file.data, mode: file.path.hasSuffix(".so") ? 0o755 : 0o644)
            }
            do {
                try parent.rename(staging, to: leaf)
            } catch {
                parent.removeTree(staging)
                // Another placement won the race.
                if let done = try? parent.subdirectory(leaf, create: false, trust: .rootOnly(allowSticky: false)),
                   done.entry(".complete") != nil {
                    return .present
                }
                throw error
            }
        } catch {
            parent.removeTree(staging)
            throw error
        }
        return .copied
    }
}
