import ArgumentParser
import Foundation
import MSMAgent
import MSMCore

struct On: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start collecting (starts the agent daemon if none runs).")

    @OptionGroup var options: AgentOptions

    @Option(help: "Seconds to wait for every target to acknowledge the config.")
    var timeout: Double = 10

    func run() async throws {
        try await withCLIErrors {
            try requireRoot()
            for pid in options.pids where !ProcessTable.exists(pid) {
                throw Fatal("ms-service-metric: no process with pid \(pid)")
            }
            if let path = options.absoluteConfig { try validateConfig(path) }
            let runtime = RuntimeDirectory()
            if !ControlSocketClient.isListening(runtime.socket) {
                var arguments = ["--listen", options.listen, "--await-commands"] + options.discoveryArguments
                if let path = options.absoluteConfig { arguments += ["--config", path] }
                try DaemonLauncher.start(runtime: runtime, arguments: arguments)
            }
            let request = ControlRequest(command: .on, pids: options.pids, config: options.absoluteConfig,
                                         timeoutSeconds: timeout,
                                         discovery: options.discovery.isOpen ? nil : options.discovery)
            guard let response = try ControlSocketClient.send(request, to: runtime.socket) else {
                throw Fatal("ms-service-metric: the agent stopped answering; see \(runtime.logFile)")
            }
            try finish(response)
        }
    }
}

struct Off: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop collecting: every target gets its original functions back; the agent exits.")

    func run() async throws {
        try await withCLIErrors {
            try requireRoot()
            let runtime = RuntimeDirectory()
            guard let response = try ControlSocketClient.send(ControlRequest(command: .off), to: runtime.socket) else {
                print("ms-service-metric: not running")
                return
            }
            // Wait for the daemon to be gone, so that a following `on` starts a fresh one.
            let deadline = ContinuousClock.now + .seconds(10)
            while ControlSocketClient.isListening(runtime.socket), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            try finish(response)
        }
    }
}

struct Restart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reload the symbol config; counters of unchanged series are kept.")

    @Option(help: "New symbol config (default: the one in use).")
    var config: String?

    func run() async throws {
        try await withCLIErrors {
            try requireRoot()
            let path = config.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
            let runtime = RuntimeDirectory()
            guard let response = try ControlSocketClient.send(ControlRequest(command: .restart, config: path),
                                                             to: runtime.socket) else {
                throw Fatal("ms-service-metric: not running", code: 3)
            }
            try finish(response)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show targets, probes and counters.")

    @Flag(help: "Machine-readable output.")
    var json = false

    func run() async throws {
        try await withCLIErrors {
            try requireRoot()
            let runtime = RuntimeDirectory()
            guard let response = try ControlSocketClient.send(ControlRequest(command: .status), to: runtime.socket) else {
                throw Fatal("ms-service-metric: not running", code: 3)
            }
            if json, let text = response.statusJSON {
                print(text)
            } else {
                try finish(response)
            }
        }
    }
}

/// Validates a config file before handing it to the agent, for a message on the spot.
func validateConfig(_ path: String) throws {
    do {
        _ = try ConfigParser.load(path: path)
    } catch {
        throw Fatal("\(error)")
    }
}
