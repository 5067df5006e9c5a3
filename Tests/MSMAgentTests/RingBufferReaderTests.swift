import XCTest
@testable import MSMAgent

final class RingBufferReaderTests: XCTestCase {
    func testAnEmptyDrainDoublesThePauseUpToTheIdleInterval() {
        let busy = Duration.milliseconds(5), idle = Duration.milliseconds(50)
        var pause = busy
        var pauses: [Duration] = []
        for _ in 0..<6 {
            pause = RingBufferReader.nextPause(after: pause, busy: busy, idle: idle)
            pauses.append(pause)
        }
        XCTAssertEqual(pauses, [.milliseconds(10), .milliseconds(20), .milliseconds(40),
                                .milliseconds(50), .milliseconds(50), .milliseconds(50)])
    }

    func testThePauseIsNeverShorterThanTheBusyInterval() {
        XCTAssertEqual(RingBufferReader.nextPause(after: .zero, busy: .milliseconds(5), idle: .milliseconds(50)),
                       .milliseconds(5))
    }
}
