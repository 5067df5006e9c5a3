import XCTest
@testable import MSMCore

final class TerminalTextTests: XCTestCase {
    func testPlainTextIsUnchanged() {
        XCTAssertEqual(TerminalText.escaped("VLLM::EngineCore_DP1 — ok"), "VLLM::EngineCore_DP1 — ok")
    }

    func testControlsAndBidiOverridesAreEscaped() {
        XCTAssertEqual(TerminalText.escaped("a\u{1b}]0;pwned\u{7}b"), "a\\x1b]0;pwned\\x07b")
        XCTAssertEqual(TerminalText.escaped("x\ty\r\n"), "x\\x09y\\x0d\\x0a")
        XCTAssertEqual(TerminalText.escaped("\u{202e}gnp.exe"), "\\u{202e}gnp.exe")
        XCTAssertEqual(TerminalText.escaped("\u{9b}2J"), "\\x9b2J")
    }
}
