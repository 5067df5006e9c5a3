import XCTest
@testable import MSMAgent

final class DiscoveryFilterTests: XCTestCase {
    func testOpenFilterAdmitsEverything() {
        XCTAssertTrue(DiscoveryFilter().admits(uid: nil, cgroups: []))
        XCTAssertTrue(DiscoveryFilter().isOpen)
    }

    func testUidMustMatchTheRealUid() {
        let f = DiscoveryFilter(uids: [1000, 1001])
        XCTAssertTrue(f.admits(uid: 1001, cgroups: []))
        XCTAssertFalse(f.admits(uid: 0, cgroups: []))
        XCTAssertFalse(f.admits(uid: nil, cgroups: []))
        XCTAssertEqual(DiscoveryFilter.realUid(status: "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n"), 1000)
    }

    func testCgroupPrefixMatchesWholeComponents() {
        let f = DiscoveryFilter(cgroupPrefixes: ["/system.slice/vllm.service/"])
        XCTAssertTrue(f.admits(uid: nil, cgroups: ["/system.slice/vllm.service"]))
        XCTAssertTrue(f.admits(uid: nil, cgroups: ["/user.slice", "/system.slice/vllm.service/worker"]))
        XCTAssertFalse(f.admits(uid: nil, cgroups: ["/system.slice/vllm.service2"]))
        XCTAssertEqual(DiscoveryFilter.cgroupPaths("12:freezer:/a\n0::/b/c\n"), ["/a", "/b/c"])
    }

    func testBothMustHoldWhenBothAreGiven() {
        let f = DiscoveryFilter(uids: [7], cgroupPrefixes: ["/k"])
        XCTAssertTrue(f.admits(uid: 7, cgroups: ["/k/pod"]))
        XCTAssertFalse(f.admits(uid: 8, cgroups: ["/k/pod"]))
        XCTAssertFalse(f.admits(uid: 7, cgroups: ["/other"]))
    }
}

final class UserNamespaceTests: XCTestCase {
    func testRootMapsToRoot() {
        XCTAssertTrue(ProcessTable.rootMapsToRoot(uidMap: "         0          0 4294967295\n"))
        XCTAssertTrue(ProcessTable.rootMapsToRoot(uidMap: "0 0 1\n"))
        XCTAssertFalse(ProcessTable.rootMapsToRoot(uidMap: "0 1000 1\n"))
        XCTAssertFalse(ProcessTable.rootMapsToRoot(uidMap: "0 100000 65536\n1 0 1\n"))
        XCTAssertFalse(ProcessTable.rootMapsToRoot(uidMap: ""))
    }
}
