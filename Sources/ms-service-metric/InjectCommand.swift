import ArgumentParser
import Foundation
import MSMAgent

/// Hidden: live injection of the provider into a running CPython process, for tests and
/// debugging until `on` uses it. Installs the provider, injects, prints the report.
struct DebugInject: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug-inject",
        abstract: "Inject the provider into a running CPython 3.10-3.13 process (ptrace).",
        shouldDisplay: false)

    @Option(help: "The target process.")
    var pid: Int32

    @Option(help: "Seconds to wait for a thread to reach the safe point.")
    var timeout: Double = 5

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(help: "Inject this Python source instead of the provider's bootstrap (tests).")
    var code: String?

    func run() throws {
        do {
            try requireRoot()
            if let code {
                emit(try Injector.inject(pid: pid, source: code, timeout: .milliseconds(Int64(max(0.001, timeout) * 1000))))
                return
            }
            let runtime = RuntimeDirectory()
            let provider = try runtime.installProvider()
            let report = try Injector.injectProvider(
                pid: pid, providerDirectory: provider, controlFile: runtime.controlFile,
                timeout: .milliseconds(Int64(max(0.001, timeout) * 1000)))
            emit(report)
            if report.providerLoaded == false { throw ExitCode(1) }
        } catch let error as InjectionError {
            if json { emit(error.report) }
            printErr("ms-service-metric: \(error.report.message)")
            throw ExitCode(1)
        } catch let exit as ExitCode {
            throw exit
        } catch let fatal as Fatal {
            printErr(fatal.description)
            throw ExitCode(fatal.code)
        } catch {
            printErr("ms-service-metric: \(error)")
            throw ExitCode(1)
        }
    }

    private func emit(_ report: InjectionReport) {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if let data = try? encoder.encode(report) { print(String(decoding: data, as: UTF8.self)) }
        } else {
            print(report.description)
        }
    }
}
