import XCTest
@testable import MSMAgent

final class ProcFormatsTests: XCTestCase {
    func statLine(comm: String, state: String = "S", parent: Int = 1, start: Int = 4242) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize ...
        "77 (\(comm)) \(state) \(parent) 77 77 0 -1 4194304 10 0 0 0 1 2 0 0 20 0 3 0 \(start) 1000 50 18446744073709551615\n"
    }

    func testStatLineFields() throws {
        let line = try XCTUnwrap(StatLine(parsing: statLine(comm: "python3", parent: 12, start: 98765)))
        XCTAssertEqual(line.parent, 12)
        XCTAssertEqual(line.startTime, 98765)
        XCTAssertEqual(line.comm, "python3")
        XCTAssertEqual(line.state, "S")
    }

    func testStatLineCommWithSpacesAndParentheses() throws {
        let line = try XCTUnwrap(StatLine(parsing: statLine(comm: "a) b (c", parent: 5)))
        XCTAssertEqual(line.comm, "a) b (c")
        XCTAssertEqual(line.parent, 5)
    }

    func testZombieAndDeadAreNotProcesses() {
        XCTAssertNil(StatLine(parsing: statLine(comm: "x", state: "Z")))
        XCTAssertNil(StatLine(parsing: statLine(comm: "x", state: "X")))
        XCTAssertNil(StatLine(parsing: "77 (truncated) S 1"))
    }

    func testMalformedStatFieldsAreRejected() {
        XCTAssertNil(StatLine(parsing: statLine(comm: "x", state: "SS")))
        XCTAssertNil(StatLine(parsing: "77 (x) S -1 77 77 0 -1 4194304 10 0 0 0 1 2 0 0 20 0 3 0 4242 1000\n"))
        XCTAssertNil(StatLine(parsing: "77 (x) S 1 77 77 0 -1 4194304 10 0 0 0 1 2 0 0 20 0 3 0 99999999999999999999999 1\n"))
        XCTAssertNil(StatLine(parsing: "77 (x) S 4294967296 77 77 0 -1 4194304 10 0 0 0 1 2 0 0 20 0 3 0 4242 1000\n"))
        XCTAssertNil(StatLine(parsing: "no parentheses S 1"))
    }

    func testStatLineWithoutTrailingNewlineAndNonASCIIComm() throws {
        let line = try XCTUnwrap(StatLine(parsing: "9 (bücher ✓) R 3 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12345 1"))
        XCTAssertEqual(line.comm, "bücher ✓")
        XCTAssertEqual(line.state, "R")
        XCTAssertEqual(line.parent, 3)
        XCTAssertEqual(line.startTime, 12345)
    }

    func testMapsWithProviderAndPython() {
        let maps = """
        55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234 /root/.pyenv/versions/3.11.7/bin/python3.11
        7f0000000000-7f0000100000 r-xp 00000000 08:01 99 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
        7f1000000000-7f1000001000 r-xp 00000000 00:1a 77 /run/ms-service-metric/provider/ab12/_msm_probe.abi3.so (deleted)
        7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
        """
        let files = MappedFiles(maps: maps)
        XCTAssertEqual(files.providerLibrary, "/run/ms-service-metric/provider/ab12/_msm_probe.abi3.so")
        XCTAssertTrue(files.mapsPython)
    }

    func testMapsWithoutPython() {
        let maps = """
        55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234 /usr/bin/sleep
        7f0000000000-7f0000100000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
        7f2000000000-7f2000001000 r-xp 00000000 08:01 98 /tmp/not_msm_probe.abi3.so.bak
        """
        let files = MappedFiles(maps: maps)
        XCTAssertNil(files.providerLibrary)
        XCTAssertFalse(files.mapsPython)
    }

    func testVllmServe() {
        XCTAssertTrue(ProcessTable.isVllmServe(arguments: ["/opt/venv/bin/python", "/opt/venv/bin/vllm", "serve", "m"]))
        XCTAssertTrue(ProcessTable.isVllmServe(arguments: ["vllm", "serve"]))
        XCTAssertFalse(ProcessTable.isVllmServe(arguments: ["serve", "vllm"]))
        XCTAssertFalse(ProcessTable.isVllmServe(arguments: ["python", "-m", "http.server", "serve"]))
        XCTAssertFalse(ProcessTable.isVllmServe(arguments: ["VLLM::EngineCore_DP0"]))
    }

    func testTitleFromArguments() {
        XCTAssertEqual(ProcessTable.title(arguments: ["python3", "service.py", "--port", "1"]), "python3 service.py --port 1")
        XCTAssertNil(ProcessTable.title(arguments: []))
        XCTAssertEqual(ProcessTable.title(arguments: [String(repeating: "x", count: 300)])?.count, 200)
    }
}
