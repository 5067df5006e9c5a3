import Foundation

/// A command sent by the CLI to the running agent over its root-only Unix socket: one JSON
/// object per line, one answer per line.
public struct ControlRequest: Codable, Sendable {
    public enum Command: String, Codable, Sendable { case on, off, restart, status }
    public var command: Command
    public var pids: [Int32]?
    /// Absolute config path; nil keeps the current config (restart) or uses the default (on).
    public var config: String?
    public var timeoutSeconds: Double?
    /// `on` without pids: which discovered processes may be targets (nil: keep the current rule).
    public var discovery: DiscoveryFilter?

    public init(command: Command, pids: [Int32]? = nil, config: String? = nil, timeoutSeconds: Double? = nil,
                discovery: DiscoveryFilter? = nil) {
        self.command = command
        self.pids = pids
        self.config = config
        self.timeoutSeconds = timeoutSeconds
        self.discovery = discovery
    }
}

public struct ControlResponse: Codable, Sendable {
    /// Process exit code for the CLI.
    public var exitCode: Int32
    /// Lines for stdout (exit 0) or stderr (otherwise).
    public var lines: [String]
    /// `status`: the JSON report, already encoded.
    public var statusJSON: String?

    public init(exitCode: Int32, lines: [String], statusJSON: String? = nil) {
        self.exitCode = exitCode
        self.lines = lines
        self.statusJSON = statusJSON
    }
}
