import CInjector
import XCTest

/// msm_pep768_parse_offsets and msm_pep768_plan on synthetic _Py_DebugOffsets blocks and a
/// synthetic process image (no CPython 3.14 is needed).
final class PEP768OffsetsTests: XCTestCase {
    // Word indexes of the CPython 3.14 layout (see pep768.c).
    static let words = 95
    static let debuggerSupport = 89

    /// A plausible 3.14.2 block: every offset inside its structure.
    static func block(version: UInt64 = 0x030E_02F0, freeThreaded: UInt64 = 0) -> [UInt64] {
        var w = [UInt64](repeating: 0, count: words)
        w[0] = "xdebugpy".utf8.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        w[1] = version
        w[2] = freeThreaded
        w[3] = 0x1000; w[4] = 0x10; w[5] = 0x400            // runtime_state: size, finalizing, interpreters_head
        w[6] = 0x5000; w[9] = 0x48; w[10] = 0x50             // interpreter_state: size, threads_head, threads_main
        w[22] = 0x800; w[24] = 0x8; w[28] = 0x60             // thread_state: size, next, native_thread_id
        let d = debuggerSupport
        w[d] = 0x18                                          // eval_breaker (PyThreadState)
        w[d + 1] = 0x500                                     // remote_debugger_support (PyThreadState)
        w[d + 2] = 0x1000                                    // remote_debugging_enabled (PyInterpreterState)
        w[d + 3] = 0                                         // debugger_pending_call
        w[d + 4] = 4                                         // debugger_script_path
        w[d + 5] = 512                                       // debugger_script_path_size
        return w
    }

    static func bytes(_ w: [UInt64]) -> [UInt8] {
        w.flatMap { v in (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    }

    func parse(_ raw: [UInt8]) -> (code: Int32, offsets: msm_pep768_offsets, message: String) {
        var out = msm_pep768_offsets()
        var err = [CChar](repeating: 0, count: 512)
        let code = raw.withUnsafeBufferPointer { buf in
            err.withUnsafeMutableBufferPointer { e in
                msm_pep768_parse_offsets(buf.baseAddress, buf.count, &out, e.baseAddress, e.count)
            }
        }
        return (code, out, String(cString: err))
    }

    func code(_ e: msm_inject_error) -> Int32 { Int32(e.rawValue) }

    func testValidBlockGivesTheProtocolFields() {
        let r = parse(Self.bytes(Self.block()))
        XCTAssertEqual(r.code, 0, r.message)
        let o = r.offsets
        XCTAssertEqual([o.major, o.minor, o.micro], [3, 14, 2])
        XCTAssertEqual(o.free_threaded, 0)
        XCTAssertEqual(o.interpreters_head, 0x400)
        XCTAssertEqual(o.threads_head, 0x48)
        XCTAssertEqual(o.threads_main, 0x50)
        XCTAssertEqual(o.tstate_next, 0x8)
        XCTAssertEqual(o.tstate_native_thread_id, 0x60)
        XCTAssertEqual(o.eval_breaker, 0x18)
        XCTAssertEqual(o.remote_debugger_support, 0x500)
        XCTAssertEqual(o.remote_debugging_enabled, 0x1000)
        XCTAssertEqual(o.debugger_pending_call, 0)
        XCTAssertEqual(o.debugger_script_path, 4)
        XCTAssertEqual(o.debugger_script_path_size, 512)
        // Longer reads (the agent reads 1024 bytes) parse the same.
        XCTAssertEqual(parse(Self.bytes(Self.block()) + [UInt8](repeating: 0xAB, count: 264)).code, 0)
    }

    func testWrongCookieIsNotCPython() {
        var raw = Self.bytes(Self.block())
        raw[0] = UInt8(ascii: "y")
        let r = parse(raw)
        XCTAssertEqual(r.code, code(MSM_INJECT_NOT_CPYTHON))
        XCTAssertTrue(r.message.contains("xdebugpy"), r.message)
    }

    func testUnsupportedVersionsAreRefused() {
        let cases: [(UInt64, String)] = [
            (0x030F_00F0, "3.15: its _Py_DebugOffsets layout is not known"),
            (0x030D_05F0, "3.13 has no PEP 768"),
            (0x040E_00F0, "4.14: its _Py_DebugOffsets layout is not known"),
            (0x020E_00F0, "2.14 has no PEP 768"),
            (0x030E_00C2, "3.14.0rc2 is a pre-release"),
            (0x030E_00B4, "3.14.0b4 is a pre-release"),
        ]
        for (version, expected) in cases {
            let r = parse(Self.bytes(Self.block(version: version)))
            XCTAssertEqual(r.code, code(MSM_INJECT_UNSUPPORTED_VERSION), String(version, radix: 16))
            XCTAssertTrue(r.message.contains(expected), "\(r.message) lacks \(expected)")
        }
        XCTAssertEqual(parse(Self.bytes(Self.block(version: 0x030E_0AF0))).code, 0, "any 3.14.x final")
    }

    func testTruncatedBufferIsRefused() {
        let full = Self.bytes(Self.block())
        for length in [0, 16, 23, 24, 100, full.count - 1] {
            let r = parse(Array(full.prefix(length)))
            XCTAssertEqual(r.code, code(MSM_INJECT_UNSUPPORTED_VERSION), "length \(length)")
            XCTAssertTrue(r.message.contains("truncated"), r.message)
        }
    }

    func testOffsetsOutsideTheirStructureAreRefused() {
        let d = Self.debuggerSupport
        let broken: [(Int, UInt64, String)] = [
            (5, 0x1000, "runtime_state"),        // interpreters_head at the end of _PyRuntimeState
            (d + 2, 0x5000, "interpreter_state"), // remote_debugging_enabled past PyInterpreterState
            (d, 0x1c, "thread_state"),           // eval_breaker not 8-aligned
            (d + 5, 1 << 40, "debugger_support"), // absurd buffer size
            (d + 1, 0x700, "debugger_support"),  // path buffer past PyThreadState
            (d + 3, 4, "debugger_support"),      // pending flag overlaps the path
        ]
        for (index, value, part) in broken {
            var w = Self.block()
            w[index] = value
            let r = parse(Self.bytes(w))
            XCTAssertEqual(r.code, code(MSM_INJECT_UNSUPPORTED_VERSION), "word \(index)")
            XCTAssertTrue(r.message.contains(part), "\(r.message) lacks \(part)")
        }
    }

    func testFreeThreadedFlagIsReported() {
        let r = parse(Self.bytes(Self.block(freeThreaded: 1)))
        XCTAssertEqual(r.code, 0, r.message)
        XCTAssertEqual(r.offsets.free_threaded, 1)
    }

    // --------------------------------------------------------------------- plan

    /// A synthetic target: _PyRuntime, one interpreter and its main thread state.
    final class Image {
        static let base: UInt64 = 0x7f00_0000_0000
        static let runtime = base, interp = base + 0x2000, tstate = base + 0x9000
        var memory = [UInt8](repeating: 0, count: 0x10000)

        init(enabled: Int32 = 1, interpreter: Bool = true, mainThread: Bool = true) {
            put(Self.runtime + 0x400, interpreter ? Self.interp : 0)          // interpreters.head
            put(Self.interp + 0x50, mainThread ? Self.tstate : 0)             // threads.main
            put(Self.interp + 0x48, mainThread ? Self.tstate : 0)             // threads.head
            put(Self.interp + 0x1000, UInt64(UInt32(bitPattern: enabled)))    // config.remote_debug
            put(Self.tstate + 0x60, 4242)                                     // native_thread_id
        }

        func put(_ addr: UInt64, _ value: UInt64) {
            for i in 0..<8 { memory[Int(addr - Self.base) + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }

        static let read: msm_pep768_read_fn = { ctx, addr, buf, len in
            let image = Unmanaged<Image>.fromOpaque(ctx!).takeUnretainedValue()
            guard addr >= Image.base, addr - Image.base + UInt64(len) <= UInt64(image.memory.count) else { return -1 }
            let start = Int(addr - Image.base)
            image.memory.withUnsafeBytes { buf!.copyMemory(from: $0.baseAddress! + start, byteCount: len) }
            return 0
        }
    }

    func plan(_ image: Image, path: String) -> (code: Int32, plan: msm_pep768_plan, message: String) {
        var offsets = parse(Self.bytes(Self.block())).offsets
        var out = msm_pep768_plan()
        var err = [CChar](repeating: 0, count: 512)
        let code = err.withUnsafeMutableBufferPointer { e in
            msm_pep768_plan(&offsets, Image.runtime, path, Image.read, Unmanaged.passUnretained(image).toOpaque(),
                            &out, e.baseAddress, e.count)
        }
        return (code, out, String(cString: err))
    }

    func testPlanTargetsTheMainThreadLikeSysRemoteExec() {
        let path = "/run/ms-service-metric/provider/abc.boot-7.py"
        let r = plan(Image(), path: path)
        XCTAssertEqual(r.code, 0, r.message)
        XCTAssertEqual(r.plan.interp, Image.interp)
        XCTAssertEqual(r.plan.tstate, Image.tstate)
        XCTAssertEqual(r.plan.native_thread_id, 4242)
        XCTAssertEqual(r.plan.script_path_addr, Image.tstate + 0x500 + 4)
        XCTAssertEqual(r.plan.script_path_len, path.utf8.count + 1)
        XCTAssertEqual(r.plan.pending_call_addr, Image.tstate + 0x500)
        XCTAssertEqual(r.plan.eval_breaker_addr, Image.tstate + 0x18)
        XCTAssertEqual(MSM_PEP768_PLEASE_STOP_BIT, 1 << 5)
    }

    func testRemoteDebuggingDisabledIsRefusedWithTheOptOutsNamed() {
        for value: Int32 in [0, -1, 2] {
            let r = plan(Image(enabled: value), path: "/tmp/x.py")
            XCTAssertEqual(r.code, code(MSM_INJECT_REMOTE_DEBUG_DISABLED), "remote_debug = \(value)")
            XCTAssertTrue(r.message.contains("PYTHON_DISABLE_REMOTE_DEBUG"), r.message)
            XCTAssertTrue(r.message.contains("-X disable-remote-debug"), r.message)
        }
    }

    func testScriptPathMustFitTheTargetsBuffer() {
        let fits = "/" + String(repeating: "a", count: 510)       // 511 bytes + NUL = 512
        XCTAssertEqual(plan(Image(), path: fits).code, 0)
        let long = plan(Image(), path: fits + "b")
        XCTAssertEqual(long.code, code(MSM_INJECT_BAD_ARGUMENT))
        XCTAssertTrue(long.message.contains("512"), long.message)
        XCTAssertEqual(plan(Image(), path: "relative.py").code, code(MSM_INJECT_BAD_ARGUMENT))
    }

    func testNoInterpreterOrMainThreadIsNotReadyYet() {
        XCTAssertEqual(plan(Image(interpreter: false), path: "/x.py").code, code(MSM_INJECT_TIMEOUT))
        XCTAssertEqual(plan(Image(mainThread: false), path: "/x.py").code, code(MSM_INJECT_TIMEOUT))
    }

    func testUnreadableMemoryIsAnError() {
        var offsets = parse(Self.bytes(Self.block())).offsets
        var out = msm_pep768_plan()
        let image = Image()
        let code = msm_pep768_plan(&offsets, 0x1000, "/x.py", Image.read, Unmanaged.passUnretained(image).toOpaque(),
                                   &out, nil, 0)
        XCTAssertEqual(code, Int32(MSM_INJECT_PTRACE_ERROR.rawValue))
    }
}
