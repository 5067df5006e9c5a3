import XCTest
@testable import MSMAgent

final class ProviderAcquisitionTests: XCTestCase {
    let start = ContinuousClock.now

    func testNewTargetIsDueAtOnce() {
        let acquisition = ProviderAcquisition()
        XCTAssertTrue(acquisition.isDue(now: start))
        XCTAssertFalse(acquisition.injecting)
        XCTAssertEqual(acquisition.attempts, 0)
        XCTAssertNil(acquisition.retryAt)
    }

    func testStartingProcessIsLookedAtAgainAfter250ms() {
        XCTAssertTrue(ProviderAcquisition.isStarting(ageSeconds: 0.4))
        XCTAssertFalse(ProviderAcquisition.isStarting(ageSeconds: 1.0))
        var acquisition = ProviderAcquisition()
        acquisition.awaitStartup(now: start)
        XCTAssertFalse(acquisition.isDue(now: start + .milliseconds(249)))
        XCTAssertTrue(acquisition.isDue(now: start + .milliseconds(250)))
        XCTAssertEqual(acquisition.attempts, 0, "waiting for startup is no injection attempt")
    }

    func testNotDueWhileInjecting() {
        var acquisition = ProviderAcquisition()
        acquisition.begin()
        XCTAssertTrue(acquisition.injecting)
        XCTAssertFalse(acquisition.isDue(now: start + .seconds(3600)))
        acquisition.finish(.injected, now: start)
        XCTAssertFalse(acquisition.injecting)
        XCTAssertEqual(acquisition.attempts, 1)
        XCTAssertTrue(acquisition.isDue(now: start))
    }

    func testSuccessKeepsTheEarlierSchedule() {
        var acquisition = ProviderAcquisition()
        acquisition.awaitStartup(now: start)
        acquisition.begin()
        acquisition.finish(.injected, now: start + .seconds(1))
        XCTAssertEqual(acquisition.retryAt, start + .milliseconds(250))
    }

    func testRetryableFailuresAfter1sThenEvery5sUpTo60AttemptsThenEveryMinute() {
        var acquisition = ProviderAcquisition()
        var now = start
        for attempt in 1...61 {
            acquisition.begin()
            acquisition.finish(.failed(retryable: true), now: now)
            let expected: Duration = attempt == 1 ? .seconds(1) : attempt < 60 ? .seconds(5) : .seconds(60)
            XCTAssertEqual(acquisition.retryAt, now + expected, "attempt \(attempt)")
            XCTAssertFalse(acquisition.isDue(now: now + expected - .milliseconds(1)))
            XCTAssertTrue(acquisition.isDue(now: now + expected))
            now = now + expected
        }
        XCTAssertEqual(acquisition.attempts, 61)
        // then 58 retries 5 s apart: the quick schedule covers about the first five minutes.
        XCTAssertEqual(ProviderAcquisition.retryDelay(attempts: 1, retryable: true), .seconds(1))
        XCTAssertEqual(ProviderAcquisition.retryDelay(attempts: 59, retryable: true), .seconds(5))
        XCTAssertEqual(ProviderAcquisition.retryDelay(attempts: 60, retryable: true), .seconds(60))
    }

    func testInjectionTimeoutGrowsAfterTheFirstTry() {
        XCTAssertEqual(ProviderAcquisition.injectionTimeout(attempts: 0), .seconds(3))
        XCTAssertEqual(ProviderAcquisition.injectionTimeout(attempts: 1), .seconds(6))
        XCTAssertEqual(ProviderAcquisition.injectionTimeout(attempts: 30), .seconds(6))
    }

    func testAFailedRevivalAllowsAnotherAfterTheRetryDelay() {
        var acquisition = ProviderAcquisition()
        XCTAssertTrue(acquisition.reviveOnce())
        XCTAssertFalse(acquisition.reviveOnce(), "once per success")
        acquisition.begin()
        acquisition.finish(.failed(retryable: true), now: start)
        acquisition.reviveFailed()
        XCTAssertFalse(acquisition.isDue(now: start + .milliseconds(999)))
        XCTAssertTrue(acquisition.isDue(now: start + .seconds(1)))
        XCTAssertTrue(acquisition.reviveOnce())
    }

    func testNonRetryableFailureWaitsAnHour() {
        var acquisition = ProviderAcquisition()
        acquisition.begin()
        acquisition.finish(.failed(retryable: false), now: start)
        XCTAssertEqual(acquisition.retryAt, start + .seconds(3600))
        XCTAssertFalse(acquisition.isDue(now: start + .seconds(3599)))
    }

    func testNotATargetCountsAsAttemptWithoutSchedule() {
        var acquisition = ProviderAcquisition()
        acquisition.begin()
        acquisition.finish(.notATarget, now: start)
        XCTAssertEqual(acquisition.attempts, 1)
        XCTAssertNil(acquisition.retryAt)
    }

    func testReviveOnlyOnce() {
        var acquisition = ProviderAcquisition()
        XCTAssertTrue(acquisition.reviveOnce())
        XCTAssertTrue(acquisition.revived)
        XCTAssertFalse(acquisition.reviveOnce())
    }
}
