import CInjector
import Foundation
import MSMArtifacts

/// What one live injection did (see Sources/CInjector/include/CInjector.h).
public struct InjectionReport: Sendable, CustomStringConvertible, Encodable {
    public enum Layout: String, Sendable, Encodable {
        case shared = "shared libpython", staticExecutable = "static executable", unknown
    }

    public let pid: Int32
    public let code: Int32
    public let message: String
    public let pythonVersion: String
    public let layout: Layout
    public let objectPath: String
    /// PyRun_SimpleString's return value: 0 ok, -1 the code raised, -2 not called; -3 handed
    /// to the target through PEP 768 (3.14+: it runs the script itself, result not seen).
    public let pyRunResult: Int32
    /// "ptrace" (3.10-3.13, safe point) or "pep768" (3.14, remote-execution protocol).
    public let method: String
    public let thread: Int32
    public let threads: Int
    public let safePointHits: Int
    /// Wake-ups sent to threads blocked in epoll_wait (an idle event loop) to reach the safe point.
    public let wokenThreads: Int
    /// How the safe point was reached: "natural", "woken" (from an event-loop wait), "event-wait"
    /// (the code ran at an interrupted epoll wait, between PyGILState_Ensure and _Release),
    /// "blocked-wait" (the same at an interrupted futex/read/poll wait, restarted afterwards) or "none".
    public let safePointMethod: String
    public let waitMilliseconds: Double
    public let heldMilliseconds: Double
    public let totalMilliseconds: Double
    /// Set by `injectProvider`: the provider's native library is mapped in the target.
    public var providerLoaded: Bool?
    /// Set by `injectProvider`: the mapped library (its path as the target sees it).
    public var providerLibrary: ProviderMapping?
    /// Set by `injectProvider`: how the provider files reached the target.
    public var placement: String?

    public var succeeded: Bool { code == Int32(MSM_INJECT_OK.rawValue) }

    public var description: String {
        var text = "pid \(pid): \(message)"
        if succeeded && method == "pep768" {
            text += String(format: "; its main thread took the request after %.1f ms", waitMilliseconds)
        } else if succeeded {
            text += String(format: "; %d threads, safe point after %.1f ms, thread held %.1f ms, total %.1f ms",
                           threads, waitMilliseconds, heldMilliseconds, totalMilliseconds)
            if safePointMethod == "woken" {
                text += "; safe point reached by waking \(wokenThreads) event-loop wait(s)"
            } else if safePointMethod == "event-wait" {
                text += "; ran at an interrupted event-loop wait (PyGILState_Ensure), \(wokenThreads) wake-up(s)"
            } else if safePointMethod == "blocked-wait" {
                text += "; ran at an interrupted blocking wait (futex/read/poll, PyGILState_Ensure; the wait was restarted), \(wokenThreads) wake-up(s)"
            }
        }
        if let loaded = providerLoaded {
            text += loaded ? "; provider loaded" : "; provider NOT loaded (see the target's stderr)"
        }
        return text
    }

    init(pid: Int32, result r: msm_inject_result) {
        var copy = r
        func text<T>(_ field: inout T) -> String {
            withUnsafeBytes(of: &field) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
        }
        self.pid = pid
        code = r.error
        message = text(&copy.message)
        pythonVersion = text(&copy.python_version)
        objectPath = text(&copy.object_path)
        switch r.layout {
        case Int32(MSM_LAYOUT_SHARED.rawValue): layout = .shared
        case Int32(MSM_LAYOUT_STATIC.rawValue): layout = .staticExecutable
        default: layout = .unknown
        }
        pyRunResult = r.pyrun_result
        method = r.method == Int32(MSM_INJECT_METHOD_PEP768.rawValue) ? "pep768" : "ptrace"
        thread = r.thread
        threads = Int(r.threads)
        safePointHits = Int(r.safe_point_hits)
        wokenThreads = Int(r.woken_threads)
        switch r.safe_point_method {
        case Int32(MSM_SAFE_POINT_NATURAL.rawValue): safePointMethod = "natural"
        case Int32(MSM_SAFE_POINT_WOKEN.rawValue): safePointMethod = "woken"
        case Int32(MSM_SAFE_POINT_EVENT_WAIT.rawValue): safePointMethod = "event-wait"
        case Int32(MSM_SAFE_POINT_BLOCKED_WAIT.rawValue): safePointMethod = "blocked-wait"
        default: safePointMethod = "none"
        }
        waitMilliseconds = r.wait_ms
        heldMilliseconds = r.held_ms
        totalMilliseconds = r.total_ms
    }
}

public struct InjectionError: Error, CustomStringConvertible {
    public let report: InjectionReport
    public var description: String { report.message }
}

/// Asks injections in progress to stop (the agent shutting down): the C injector reads the
/// flag every 50 ms at most and stops as soon as that is safe (see msm_inject_options).
public final class InjectionCancellation: @unchecked Sendable {
    // Safe to share between threads: one aligned Int32 that only ever goes from 0 to 1
    // (an atomic store here); the injector's thread only loads it.
    let flag: UnsafeMutablePointer<Int32>

    public init() {
        flag = .allocate(capacity: 1)
        flag.initialize(to: 0)
    }

    public func cancel() { msm_atomic_store_int(flag, 1) }

    public var isCancelled: Bool { msm_atomic_load_int(flag) != 0 }

    deinit { flag.deallocate() }
}

/// Live injection into an already running, unprepared CPython process: 3.10-3.13 with ptrace
/// at a safe point, 3.14 with the PEP 768 remote-execution protocol (a script file).
public enum Injector {
    /// Runs `source` with PyRun_SimpleString in a thread of `pid` stopped at a safe point.
    /// Throws InjectionError (with the report) for every refusal and failure, including a
    /// Python exception in `source` (PyRun_SimpleString returned -1).
    public static func inject(pid: Int32, source: String, timeout: Duration,
                              cancellation: InjectionCancellation? = nil) throws -> InjectionReport {
        var result = msm_inject_result()
        let object = Artifacts.injectBPFObject
        object.withUnsafeBytes { bpf in
            var options = msm_inject_options(bpf_object: bpf.baseAddress, bpf_object_len: bpf.count,
                                             cancel: cancellation.map { UnsafePointer($0.flag) })
            _ = source.withCString { msm_inject_python(pid, $0, Int32(milliseconds(timeout)), &options, &result) }
        }
        let report = InjectionReport(pid: pid, result: result)
        guard report.succeeded else { throw InjectionError(report: report) }
        return report
    }

    /// Installed provider → placed in the target's mount namespace if needed → injected;
    /// then waits (bounded) until the provider's native library is mapped in the target.
    public static func injectProvider(pid: Int32, providerDirectory: String, controlFile: String,
                                      timeout: Duration, cancellation: InjectionCancellation? = nil,
                                      loadTimeout: Duration = .seconds(3)) throws -> InjectionReport {
        var check = msm_inject_result()
        msm_inject_check(pid, &check)
        let preflight = InjectionReport(pid: pid, result: check)
        guard preflight.succeeded else { throw InjectionError(report: preflight) }
        let placement = try ProviderPlacement.place(providerDirectory: providerDirectory, forPid: pid,
                                                    files: Artifacts.providerFiles)
        let source = bootstrapSource(providerDirectory: providerDirectory, controlFile: controlFile)
        var script: String?
        var report: InjectionReport
        if check.method == Int32(MSM_INJECT_METHOD_PEP768.rawValue) {
            let path = try writeBootScript(source, providerDirectory: providerDirectory, pid: pid)
            script = path
            report = try requestRemoteExec(pid: pid, scriptPath: path, timeout: timeout)
        } else {
            report = try inject(pid: pid, source: source, timeout: timeout, cancellation: cancellation)
        }
        report.placement = placement.rawValue
        let deadline = ContinuousClock.now + loadTimeout
        var library = ProcessTable.providerMapping(of: pid)
        while library == nil && ContinuousClock.now < deadline && cancellation?.isCancelled != true {
            usleep(10_000)
            library = ProcessTable.providerMapping(of: pid)
        }
        report.providerLibrary = library
        report.providerLoaded = library != nil
        if library != nil, let script {  // read by now; a pending request keeps its file
            removeBootScript(script, pid: pid)
        }
        return report
    }

    /// CPython 3.14 (PEP 768): asks the main thread of `pid` to run the file `scriptPath` (a
    /// path valid in the target's mount namespace) at its next eval-breaker check; waits up to
    /// `timeout` until that thread took the request. Throws InjectionError for refusals and
    /// for a request still pending at the timeout (code MSM_INJECT_TIMEOUT, pyRunResult -3).
    public static func requestRemoteExec(pid: Int32, scriptPath: String, timeout: Duration) throws -> InjectionReport {
        var result = msm_inject_result()
        _ = scriptPath.withCString { msm_pep768_inject(pid, $0, Int32(milliseconds(timeout)), &result) }
        let report = InjectionReport(pid: pid, result: result)
        guard report.succeeded else { throw InjectionError(report: report) }
        return report
    }

    /// The bootstrap as a file the target can open: `<providerDirectory>.boot-<pid>.py`, beside
    /// the provider files placed for it, written through TargetRoot (the directories were
    /// created or checked by ProviderPlacement). Returns the path as the target sees it.
    static func writeBootScript(_ source: String, providerDirectory: String, pid: Int32) throws -> String {
        let parent = (providerDirectory as NSString).deletingLastPathComponent
        let name = "\((providerDirectory as NSString).lastPathComponent).boot-\(pid).py"
        let directory = try TargetRoot(pid: pid).directory(parent, create: false, trust: .rootOnly(allowSticky: false))
        try directory.replaceFile(name, data: Data((source + "\n").utf8), mode: 0o644)
        return "\(parent)/\(name)"
    }

    static func removeBootScript(_ path: String, pid: Int32) {
        let parent = (path as NSString).deletingLastPathComponent
        guard let directory = try? TargetRoot(pid: pid).directory(parent, create: false, trust: .any) else { return }
        directory.remove((path as NSString).lastPathComponent)
    }

    private static func milliseconds(_ timeout: Duration) -> Int64 {
        let parts = timeout.components
        return max(1, min(Int64(Int32.max), parts.seconds * 1000 + parts.attoseconds / 1_000_000_000_000_000))
    }

    /// The Python source the injection runs: ONE expression statement that binds no name in
    /// `__main__`. It only starts a daemon thread (`msm-inject`) and returns, so the
    /// hijacked thread runs a few bytecodes; the thread loads the provider package straight
    /// from `providerDirectory` (nothing added to sys.path; an already loaded provider, e.g.
    /// from `exec`, is reused) and starts it with `origin="injected"`. Every exception is
    /// caught; a KeyboardInterrupt that lands in it is re-raised in the main thread later.
    public static func bootstrapSource(providerDirectory: String, controlFile: String) -> String {
        let inner = """
            def _msm_boot(d, control):
                import os, sys
                try:
                    m = sys.modules.get('msm_provider')
                    if m is None or not hasattr(m, 'start'):
                        import importlib.util
                        pkg = os.path.join(d, 'msm_provider')
                        spec = importlib.util.spec_from_file_location(
                            'msm_provider', os.path.join(pkg, '__init__.py'),
                            submodule_search_locations=[pkg])
                        m = importlib.util.module_from_spec(spec)
                        sys.modules['msm_provider'] = m
                        try:
                            spec.loader.exec_module(m)
                        except BaseException:
                            for k in [k for k in sys.modules
                                      if k == 'msm_provider' or k.startswith('msm_provider.')]:
                                sys.modules.pop(k, None)
                            raise
                    if m.start(quiet=True, control_path=control, origin='injected',
                               native_path=os.path.join(d, '_msm_probe.abi3.so')) is None:
                        return
                except BaseException as e:
                    try:
                        sys.stderr.write('ms-service-metric provider (pid %d): not started: %s: %s\\n'
                                         % (os.getpid(), type(e).__name__, e))
                    except BaseException:
                        pass

            try:
                _t = __import__('sys').modules.get('threading')
                _a = (\(pythonLiteral(providerDirectory)), \(pythonLiteral(controlFile)))
                if _t is not None:
                    _t.Thread(target=_msm_boot, args=_a, name='msm-inject', daemon=True).start()
                else:
                    __import__('_thread').start_new_thread(_msm_boot, _a)
            except KeyboardInterrupt:
                try:
                    __import__('_thread').interrupt_main()
                except BaseException:
                    pass
            except BaseException:
                pass

            """
        return "exec(compile(\(pythonLiteral(inner)), '<ms-service-metric>', 'exec'), {'__name__': '__msm_boot__'})"
    }

    /// A Python string literal (single quotes, ASCII only) for any Swift string.
    static func pythonLiteral(_ text: String) -> String {
        var out = "'"
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "'": out += "\\'"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value >= 0x20 && scalar.value < 0x7f {
                    out.unicodeScalars.append(scalar)
                } else if scalar.value <= 0xffff {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out += String(format: "\\U%08x", scalar.value)
                }
            }
        }
        return out + "'"
    }
}
