import ArgumentParser
import Foundation
import MSMAgent
import MSMCore

@main
struct MSMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ms-service-metric",
        abstract: "vLLM profiling metrics from eBPF uprobes, served as Prometheus text.",
        discussion: """
            Attach to Python services started with `exec` and serve vllm_profiling_* metrics on
            their own port, without PROMETHEUS_MULTIPROC_DIR and at no cost when off.
            """,
        version: AgentVersion.version,
        subcommands: [On.self, Off.self, Restart.self, Status.self, Run.self, Exec.self, CheckConfig.self, DebugInject.self]
    )
}

/// Options shared by `on` and `run`.
struct AgentOptions: ParsableArguments {
    @Option(name: .customLong("pid"), help: "Target process (with its descendants); repeatable. None: every process carrying the provider.")
    var pids: [Int32] = []

    @Option(help: "Symbol config (YAML). Default: $MS_SERVICE_METRIC_VLLM_CONFIG, else the built-in config.")
    var config: String?

    @Option(help: "Address of the /metrics endpoint.")
    var listen: String = "127.0.0.1:9464"

    @Option(name: .customLong("only-uid"), help: "Without --pid: take only discovered processes of this real uid; repeatable.")
    var onlyUids: [UInt32] = []

    @Option(name: .customLong("only-cgroup"), help: "Without --pid: take only discovered processes under this cgroup path (as in /proc/PID/cgroup); repeatable.")
    var onlyCgroups: [String] = []

    var discovery: DiscoveryFilter { DiscoveryFilter(uids: Set(onlyUids), cgroupPrefixes: onlyCgroups) }

    /// The daemon's arguments that carry these options.
    var discoveryArguments: [String] {
        onlyUids.flatMap { ["--only-uid", String($0)] } + onlyCgroups.flatMap { ["--only-cgroup", $0] }
    }

    /// Set by `on` when it starts the daemon: targets come with `on`'s own request.
    @Flag(help: .hidden)
    var awaitCommands = false

    var absoluteConfig: String? {
        config.map { $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0 }
    }
}

/// One line on stderr and a non-zero exit, the way every failure of the CLI ends.
struct Fatal: Error, CustomStringConvertible {
    let description: String
    let code: Int32
    init(_ description: String, code: Int32 = 1) {
        self.description = description
        self.code = code
    }
}

func requireRoot() throws {
    guard geteuid() == 0 else { throw Fatal("ms-service-metric: must run as root (try sudo)") }
}

func printErr(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Runs a CLI body and turns errors into one message and an exit code.
func withCLIErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let fatal as Fatal {
        printErr(fatal.description)
        throw ExitCode(fatal.code)
    } catch let exit as ExitCode {
        throw exit
    } catch {
        printErr("ms-service-metric: \(error)")
        throw ExitCode(1)
    }
}

/// Prints a response from the agent and exits with its code.
func finish(_ response: ControlResponse) throws {
    // Lines carry process titles and provider messages: printed with controls escaped.
    let lines = response.lines.flatMap { $0.split(separator: "\n", omittingEmptySubsequences: false) }
    for line in lines.map({ TerminalText.escaped(String($0)) }) {
        if response.exitCode == 0 { print(line) } else { printErr(line) }
    }
    if response.exitCode != 0 { throw ExitCode(response.exitCode) }
}
