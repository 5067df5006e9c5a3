import Foundation

/// `ms-service-metric exec -- CMD…`: installs the provider and replaces this process with
/// CMD, environment prepared so that every Python process in the command's tree loads the
/// provider, dormant, at start-up (the way `opentelemetry-instrument` wraps a command).
public enum ExecLauncher {
    public static func environment(providerDirectory: String, controlFile: String,
                                   base: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
        var env = base
        let existing = base["PYTHONPATH"].map { ":" + $0 } ?? ""
        env["PYTHONPATH"] = "\(providerDirectory)/boot:\(providerDirectory)\(existing)"
        env["MS_SERVICE_METRIC_PROVIDER"] = providerDirectory
        env["MS_SERVICE_METRIC_CONTROL"] = controlFile
        return env
    }

    /// Does not return on success.
    public static func exec(command: [String], runtime: RuntimeDirectory) throws -> Never {
        guard let program = command.first else { throw RuntimeError("exec needs a command, e.g. exec -- python3 app.py") }
        // Installing the provider needs root (the runtime directory is root-only); a service
        // account can run its command once it is installed (by the agent or a root `exec`).
        let provider: String
        if geteuid() == 0 {
            provider = try runtime.installProvider()
        } else if let installed = runtime.installedProviderDirectory() {
            provider = installed
        } else {
            throw RuntimeError("the provider is not installed in \(runtime.path) yet, and installing it needs root: "
                + "run `sudo ms-service-metric exec -- true` once (or start the agent), then exec as any user")
        }
        for (key, value) in environment(providerDirectory: provider, controlFile: runtime.controlFile) {
            setenv(key, value, 1)
        }
        resetSignalsForExec()
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
        argv.append(nil)
        execvp(program, &argv)
        throw RuntimeError("cannot run \(program): \(String(cString: strerror(errno)))")
    }
}

/// The signal mask and ignored signals survive execve. Threads of the Swift runtime block most
/// signals and ignore SIGPIPE; a command started from such a state would never see SIGTERM.
/// Give it what a shell would: nothing blocked, SIGPIPE at its default.
func resetSignalsForExec() {
    var empty = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, nil)
    signal(SIGPIPE, SIG_DFL)
}
