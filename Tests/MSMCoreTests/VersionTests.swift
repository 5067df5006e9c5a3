import XCTest
@testable import MSMCore
final class VersionTests: XCTestCase { func testVersion() { XCTAssertFalse(MSMCoreVersion.version.isEmpty) } }
