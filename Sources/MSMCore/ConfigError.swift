/// One problem found in a symbol config, rendered as `FILE:LINE: FIELD: PROBLEM`
/// (the format `check-config`, `on` and `restart` print, one line per error).
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file as the user named it, or `<built-in>`.
    public var file: String
    /// 1-based line of the offending node (0 when unknown, e.g. unreadable file).
    public var line: Int
    /// Field path relative to the symbol entry, e.g. `metrics[0].labels[1].name`;
    /// `yaml` for syntax errors, `config` for problems with the document as a whole.
    public var field: String
    public var message: String

    public init(file: String, line: Int, field: String, message: String) {
        self.file = file
        self.line = line
        self.field = field
        self.message = message
    }

    public var description: String { "\(file):\(line): \(field): \(message)" }
}

/// Every problem found in one config (never empty when thrown).
public struct ConfigErrorList: Error, Sendable, Equatable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) { self.errors = errors }

    /// One line per error, in file order.
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}
