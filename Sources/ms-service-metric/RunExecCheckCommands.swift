import ArgumentParser
import Foundation
import Logging
import MSMAgent
import MSMArtifacts
import MSMCore

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the agent in the foreground (for systemd or Kubernetes); SIGTERM releases the targets.")

    @OptionGroup var options: AgentOptions

    func run() async throws {
        try await withCLIErrors {
            try requireRoot()
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = .info
                return handler
            }
            let logger = Logger(label: "ms-service-metric")
            if let path = options.absoluteConfig { try validateConfig(path) }
            let settings = Agent.Settings(
                runtime: RuntimeDirectory(), listen: options.listen,
                configSource: ConfigSource.resolve(explicitPath: options.absoluteConfig,
                                                   environment: ProcessInfo.processInfo.environment),
                defaultConfigText: Artifacts.defaultConfig, discovery: options.discovery)
            try await AgentDaemon.run(settings: settings, initialPids: options.pids,
                                      startCollecting: !options.awaitCommands, logger: logger)
        }
    }
}

// Synchronous, so that it runs on the main thread: the command inherits this thread's state.
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command with the provider preloaded and dormant; `on` wakes it.")

    @Argument(parsing: .captureForPassthrough, help: "The command, e.g. -- vllm serve MODEL")
    var command: [String] = []

    func run() throws {
        do {
            let arguments = command.first == "--" ? Array(command.dropFirst()) : command
            try ExecLauncher.exec(command: arguments, runtime: RuntimeDirectory())
        } catch let fatal as Fatal {
            printErr(fatal.description)
            throw ExitCode(fatal.code)
        } catch {
            printErr("ms-service-metric: \(error)")
            throw ExitCode(1)
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config", abstract: "Validate a symbol config offline.")

    @Argument(help: "The YAML file.")
    var file: String

    func run() async throws {
        do {
            let config = try Agent.loadConfig(.file(file), defaultText: Artifacts.defaultConfig)
            let metrics = config.entries.reduce(0) { $0 + $1.metrics.count }
            for warning in config.warnings { printErr("warning: \(warning)") }
            print("\(file): OK (\(config.entries.count) symbols, \(metrics) metrics)")
        } catch {
            printErr("\(error)")
            throw ExitCode(1)
        }
    }
}
