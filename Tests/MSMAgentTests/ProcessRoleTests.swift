import XCTest
@testable import MSMAgent

final class ProcessRoleTests: XCTestCase {
    func role(_ title: String) -> ProcessRole { ProcessRole.classify(title: title) }

    func testEngineCoreTakesItsRankFromTheTitle() {
        XCTAssertEqual(role("VLLM::EngineCore_DP1"), ProcessRole(role: "engine_core", dp: 1, inheritsRank: false))
        XCTAssertEqual(role("VLLM::EngineCore_DP12"), ProcessRole(role: "engine_core", dp: 12, inheritsRank: false))
    }

    func testEngineCoreWithoutRankIsRankZero() {
        XCTAssertEqual(role("VLLM::EngineCore"), ProcessRole(role: "engine_core", dp: 0, inheritsRank: false))
        XCTAssertEqual(role("VLLM::EngineCore_DP"), ProcessRole(role: "engine_core", dp: 0, inheritsRank: false),
                       "no digits: the rank-less rule matches")
    }

    func testWorkerInheritsItsRank() {
        XCTAssertEqual(role("VLLM::Worker"), ProcessRole(role: "worker", dp: 0, inheritsRank: true))
        XCTAssertEqual(role("VLLM::Worker_TP1"), ProcessRole(role: "worker", dp: 0, inheritsRank: true))
    }

    func testFrontEndProcessesHaveNoRank() {
        XCTAssertEqual(role("VLLM::DPCoordinator"), ProcessRole(role: "dp_coordinator", dp: -1, inheritsRank: false))
        XCTAssertEqual(role("VLLM::APIServer_0"), ProcessRole(role: "api_server", dp: -1, inheritsRank: false))
    }

    func testAnythingElseIsMain() {
        let main = ProcessRole(role: "main", dp: -1, inheritsRank: false)
        XCTAssertEqual(role(""), main)
        XCTAssertEqual(role("python3 -m vllm.entrypoints.openai.api_server"), main)
        XCTAssertEqual(role("python -c from multiprocessing.spawn import spawn_main"), main)
        XCTAssertEqual(role("vllm::enginecore_dp1"), main, "case matters")
    }

    func testTheMarkerMayStandAnywhereInTheTitle() {
        XCTAssertEqual(role("python VLLM::EngineCore_DP3 extra"), ProcessRole(role: "engine_core", dp: 3, inheritsRank: false))
    }

    func testPythonHelpers() {
        XCTAssertTrue(ProcessRole.isPythonHelper(title: "python3 -c from multiprocessing.resource_tracker import main;main(5)"))
        XCTAssertFalse(ProcessRole.isPythonHelper(title: "VLLM::Worker"))
    }
}
