import CInjector
import Foundation

/// Symbols of an ELF file as the kernel's uprobe API wants them: name → file offset (for the
/// probed instruction and for the USDT-style semaphore's `ref_ctr_offset`).
///
/// A thin wrapper over the C reader in Sources/CInjector/elf.c, the one ELF reader of the
/// project: the files it reads are chosen by the processes the agent observes, and that
/// reader checks every offset with overflow-checked arithmetic, opens only regular files
/// without blocking, and is fuzzed (Tests/fuzz).
public struct ELFSymbolTable: Sendable {
    public struct Symbol: Sendable, Equatable {
        public let name: String
        public let value: UInt64
        public let size: UInt64
        public let fileOffset: UInt64
    }

    public enum Failure: Error, CustomStringConvertible {
        case unreadable(String, String)
        case malformed(String)
        case missingSymbol(String, String)

        public var description: String {
            switch self {
            case let .unreadable(path, why): "cannot read \(path): \(why)"
            case let .malformed(why): why
            case let .missingSymbol(path, name): "\(path) has no symbol \(name)"
            }
        }
    }

    /// Provider libraries are a few hundred KiB; anything past this is not ours.
    public static let maximumFileSize: UInt64 = 64 << 20

    public let path: String
    private let symbols: [String: Symbol]

    /// Reads `names` from the file at `path` (.dynsym, then .symtab). Names the file lacks
    /// are absent from the table (see `symbol(named:)`).
    public init(path: String, names: [String]) throws {
        var error = [CChar](repeating: 0, count: 512)
        var size: UInt64 = 0
        let fd = msm_open_regular(path, Self.maximumFileSize, &size, &error, error.count)
        guard fd >= 0 else { throw Failure.unreadable(path, Self.text(error)) }
        defer { close(fd) }
        try self.init(path: path, source: msm_elf_source(fd: fd, bytes: nil, size: size), names: names)
    }

    /// The same from bytes in memory (tests, fuzzing).
    public init(path: String, bytes: [UInt8], names: [String]) throws {
        self = try bytes.withUnsafeBufferPointer { buffer in
            try ELFSymbolTable(path: path, source: msm_elf_source(fd: -1, bytes: buffer.baseAddress, size: UInt64(buffer.count)),
                               names: names)
        }
    }

    private init(path: String, source: msm_elf_source, names: [String]) throws {
        self.path = path
        var error = [CChar](repeating: 0, count: 512)
        var elf = msm_elf()
        guard msm_elf_open(&elf, source, path, &error, error.count) == 0 else {
            throw Failure.malformed(Self.text(error))
        }
        defer { msm_elf_close(&elf) }
        var table: [String: Symbol] = [:]
        for name in names {
            var found = msm_elf_symbol()
            guard msm_elf_find_symbol(&elf, name, Int32(MSM_ELF_DYNSYM | MSM_ELF_SYMTAB), &found) == 0,
                  found.has_file_offset != 0 else { continue }
            table[name] = Symbol(name: name, value: found.value, size: found.size, fileOffset: found.file_offset)
        }
        symbols = table
    }

    public func symbol(named name: String) throws -> Symbol {
        guard let symbol = symbols[name] else { throw Failure.missingSymbol(path, name) }
        return symbol
    }

    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
