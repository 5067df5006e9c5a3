import Foundation
import XCTest
@testable import MSMAgent

/// Against this machine's real /proc: the test process and a child it starts.
final class ProcessScanCacheTests: XCTestCase {
    func testSeesThisProcessAndAChild() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        defer { child.terminate(); child.waitUntilExit() }
        let me = getpid()

        var cache = ProcessScanCache()
        cache.refresh()
        XCTAssertEqual(cache.startTime(of: me), ProcessTable.statFields(me)?.startTime)
        XCTAssertEqual(cache.parent(of: child.processIdentifier), me)
        XCTAssertTrue(cache.descendants(of: [me]).contains(child.processIdentifier))
        XCTAssertFalse(cache.descendants(of: [child.processIdentifier]).contains(me))
        XCTAssertEqual(cache.title(of: child.processIdentifier), "/bin/sleep 30")
        XCTAssertFalse(cache.providerProcesses().contains(child.processIdentifier))
        XCTAssertFalse(cache.vllmServers().contains(child.processIdentifier))
    }

    func testForgetsAProcessThatExited() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        var cache = ProcessScanCache()
        cache.refresh()
        XCTAssertNotNil(cache.startTime(of: child.processIdentifier))
        child.terminate()
        child.waitUntilExit()  // reaped: its /proc entry is gone
        cache.refresh()
        XCTAssertNil(cache.startTime(of: child.processIdentifier))
        XCTAssertFalse(cache.descendants(of: [getpid()]).contains(child.processIdentifier))
    }
}
