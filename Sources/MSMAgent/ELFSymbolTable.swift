import Foundation

/// Reads the symbols of an ELF64 little-endian file and turns their addresses into file
/// offsets, which is what the kernel's uprobe API wants (both for the probed instruction and
/// for the USDT-style semaphore's `ref_ctr_offset`).
///
/// Written here rather than through libelf because we need exactly one thing — name → file
/// offset — and reading two tables is shorter than wrapping libelf's C API for Swift.
public struct ELFSymbolTable: Sendable {
    public struct Symbol: Sendable, Equatable {
        public let name: String
        public let value: UInt64
        public let size: UInt64
        public let fileOffset: UInt64
    }

    public enum Failure: Error, CustomStringConvertible {
        case unreadable(String, String)
        case notELF64(String)
        case truncated(String)
        case missingSymbol(String, String)

        public var description: String {
            switch self {
            case let .unreadable(path, why): "cannot read \(path): \(why)"
            case let .notELF64(path): "\(path) is not a 64-bit little-endian ELF file"
            case let .truncated(path): "\(path) is truncated or malformed"
            case let .missingSymbol(path, name): "\(path) has no symbol \(name)"
            }
        }
    }

    public let path: String
    private let symbols: [String: Symbol]

    public init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe)
        } catch {
            throw Failure.unreadable(path, "\(error.localizedDescription)")
        }
        try self.init(path: path, bytes: [UInt8](data))
    }

    public init(path: String, bytes: [UInt8]) throws {
        self.path = path
        guard bytes.count >= 64, bytes[0] == 0x7f, bytes[1] == 0x45, bytes[2] == 0x4c, bytes[3] == 0x46,
              bytes[4] == 2 /* ELFCLASS64 */, bytes[5] == 1 /* little-endian */ else {
            throw Failure.notELF64(path)
        }
        let reader = ByteReader(bytes: bytes, path: path)
        let sectionOffset = try reader.u64(0x28)
        let sectionEntrySize = UInt64(try reader.u16(0x3A))
        let sectionCount = UInt64(try reader.u16(0x3C))
        guard sectionEntrySize >= 64 else { throw Failure.truncated(path) }

        struct Section { let type: UInt32; let addr: UInt64; let offset: UInt64; let size: UInt64; let link: UInt32; let entsize: UInt64 }
        var sections: [Section] = []
        for index in 0..<sectionCount {
            let base = Int(sectionOffset + index * sectionEntrySize)
            sections.append(Section(
                type: try reader.u32(base + 4), addr: try reader.u64(base + 16), offset: try reader.u64(base + 24),
                size: try reader.u64(base + 32), link: try reader.u32(base + 40), entsize: try reader.u64(base + 56)))
        }

        var table: [String: Symbol] = [:]
        for section in sections where section.type == 2 /* SHT_SYMTAB */ || section.type == 11 /* SHT_DYNSYM */ {
            guard section.entsize >= 24, Int(section.link) < sections.count else { continue }
            let strings = sections[Int(section.link)]
            let count = section.size / section.entsize
            for index in 0..<count {
                let base = Int(section.offset + index * section.entsize)
                let nameOffset = try reader.u32(base)
                let sectionIndex = Int(try reader.u16(base + 6))
                let value = try reader.u64(base + 8)
                let size = try reader.u64(base + 16)
                // Undefined, absolute and special section indices have no file offset.
                guard sectionIndex != 0, sectionIndex < sections.count, value != 0 else { continue }
                let name = try reader.cString(Int(strings.offset) + Int(nameOffset))
                guard !name.isEmpty, table[name] == nil else { continue }
                let home = sections[sectionIndex]
                guard value >= home.addr else { continue }
                table[name] = Symbol(name: name, value: value, size: size, fileOffset: value - home.addr + home.offset)
            }
        }
        symbols = table
    }

    public func symbol(named name: String) throws -> Symbol {
        guard let symbol = symbols[name] else { throw Failure.missingSymbol(path, name) }
        return symbol
    }
}

private struct ByteReader {
    let bytes: [UInt8]
    let path: String

    private func check(_ offset: Int, _ width: Int) throws {
        guard offset >= 0, offset + width <= bytes.count else { throw ELFSymbolTable.Failure.truncated(path) }
    }

    func u16(_ offset: Int) throws -> UInt16 {
        try check(offset, 2)
        return UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
    }

    func u32(_ offset: Int) throws -> UInt32 {
        try check(offset, 4)
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    func u64(_ offset: Int) throws -> UInt64 {
        try check(offset, 8)
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    func cString(_ offset: Int) throws -> String {
        try check(offset, 1)
        var end = offset
        while end < bytes.count, bytes[end] != 0 { end += 1 }
        return String(decoding: bytes[offset..<end], as: UTF8.self)
    }
}
