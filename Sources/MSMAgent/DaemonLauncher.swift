import CPosixShim
import Foundation

/// Starts the agent as a detached daemon (`ms-service-metric run …` in a new session, output
/// to agent.log) and waits until its control socket answers.
public enum DaemonLauncher {
    public static func start(runtime: RuntimeDirectory, arguments: [String], timeout: Duration = .seconds(15)) throws {
        try runtime.prepare()
        let executable = try selfExecutable()
        let log = open(runtime.logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw RuntimeError("cannot open \(runtime.logFile): \(String(cString: strerror(errno)))") }
        defer { close(log) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, log, 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // New session; nothing blocked and SIGPIPE at its default in the child, whatever the
        // calling thread had (threads of the Swift runtime block most signals).
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, msm_posix_spawn_setsid_flag() | Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = [executable, "run"] + arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        defer { cArgs.forEach { free($0) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, executable, &actions, &attributes, cArgs, environ)
        guard spawned == 0 else { throw RuntimeError("cannot start the agent: \(String(cString: strerror(spawned)))") }

        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if ControlSocketClient.isListening(runtime.socket) { return }
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                throw RuntimeError("the agent exited during start-up:\n" + logTail(runtime.logFile))
            }
            usleep(20_000)
        }
        throw RuntimeError("the agent did not open its control socket within \(timeout); see \(runtime.logFile):\n" + logTail(runtime.logFile))
    }

    static func selfExecutable() throws -> String {
        let path = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return path
    }

    static func logTail(_ path: String, lines: Int = 15) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }
}
