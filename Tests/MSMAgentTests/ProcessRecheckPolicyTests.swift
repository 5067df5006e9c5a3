import XCTest
@testable import MSMAgent

final class ProcessRecheckPolicyTests: XCTestCase {
    let policy = ProcessRecheckPolicy()

    func testArgumentsReadFirstTimeWhileYoungAndOnCommChange() {
        XCTAssertTrue(policy.rereadArguments(readBefore: false, commChanged: false, ageSeconds: 100))
        XCTAssertTrue(policy.rereadArguments(readBefore: true, commChanged: false, ageSeconds: 2.9))
        XCTAssertFalse(policy.rereadArguments(readBefore: true, commChanged: false, ageSeconds: 3))
        // execve or setproctitle ("VLLM::EngineCore_DP1") change comm: read again however old.
        XCTAssertTrue(policy.rereadArguments(readBefore: true, commChanged: true, ageSeconds: 500))
    }

    func testMapsNeverReadIsDue() {
        XCTAssertTrue(policy.rereadMaps(last: nil, commChanged: false, ageSeconds: 100, readAtAgeSeconds: 0))
    }

    func testProviderIsKeptUntilCommChanges() {
        XCTAssertFalse(policy.rereadMaps(last: .provider, commChanged: false, ageSeconds: 1, readAtAgeSeconds: 0.5))
        XCTAssertFalse(policy.rereadMaps(last: .provider, commChanged: false, ageSeconds: 1000, readAtAgeSeconds: 1))
        XCTAssertTrue(policy.rereadMaps(last: .provider, commChanged: true, ageSeconds: 1000, readAtAgeSeconds: 1))
    }

    func testPythonWithoutProviderIsReadEveryScan() {
        XCTAssertTrue(policy.rereadMaps(last: .python, commChanged: false, ageSeconds: 1000, readAtAgeSeconds: 999.75))
    }

    func testNoPythonIsReadWhileYoungThenEvery30s() {
        XCTAssertTrue(policy.rereadMaps(last: .noPython, commChanged: false, ageSeconds: 2.5, readAtAgeSeconds: 2.25))
        XCTAssertFalse(policy.rereadMaps(last: .noPython, commChanged: false, ageSeconds: 40, readAtAgeSeconds: 10.5))
        XCTAssertTrue(policy.rereadMaps(last: .noPython, commChanged: false, ageSeconds: 40.5, readAtAgeSeconds: 10.5))
        XCTAssertTrue(policy.rereadMaps(last: .noPython, commChanged: true, ageSeconds: 40, readAtAgeSeconds: 39.75))
    }
}
