import CInjector
import XCTest
import MSMCore
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

    func testTransientInjectionFailuresAreRetryable() {
        for code in [MSM_INJECT_TIMEOUT, MSM_INJECT_ALREADY_TRACED, MSM_INJECT_PTRACE_ERROR, MSM_INJECT_ATTACH_FAILED] {
            XCTAssertTrue(ProviderAcquisition.isRetryable(injectionCode: Int32(code.rawValue)), "\(code)")
        }
        for code in [MSM_INJECT_NOT_CPYTHON, MSM_INJECT_UNSUPPORTED_VERSION, MSM_INJECT_FREE_THREADED,
                     MSM_INJECT_PTRACE_DISABLED, MSM_INJECT_PYTHON_ERROR, MSM_INJECT_REMOTE_DEBUG_DISABLED] {
            XCTAssertFalse(ProviderAcquisition.isRetryable(injectionCode: Int32(code.rawValue)), "\(code)")
        }
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

    // MARK: - Settling (what `on` waits for before it reports)

    func settling(_ acquisition: ProviderAcquisition, _ state: TargetState, busy: Bool = false, named: Bool = false,
                  deadline: ContinuousClock.Instant) -> Bool {
        acquisition.isSettling(state: state, busy: busy, named: named, deadline: deadline)
    }

    func failed(times: Int, at now: ContinuousClock.Instant) -> ProviderAcquisition {
        var acquisition = ProviderAcquisition()
        for _ in 0..<times {
            acquisition.begin()
            acquisition.finish(.failed(retryable: true), now: now)
        }
        return acquisition
    }

    func testSettledWhenNothingIsPending() {
        let deadline = start + .seconds(10)
        for state in TargetState.allCases {
            XCTAssertFalse(settling(ProviderAcquisition(), state, named: true, deadline: deadline), "\(state)")
        }
    }

    func testSettlingWhileInjectingOrBusyWhateverTheState() {
        var injecting = ProviderAcquisition()
        injecting.begin()
        for state in TargetState.allCases {
            XCTAssertTrue(settling(injecting, state, deadline: start), "\(state)")
            XCTAssertTrue(settling(ProviderAcquisition(), state, busy: true, deadline: start), "\(state)")
        }
    }

    func testSettlingWhileStarting() {
        var starting = ProviderAcquisition()
        starting.awaitStartup(now: start)
        XCTAssertTrue(settling(starting, .noProvider, deadline: start))
        XCTAssertFalse(settling(starting, .attached, deadline: start + .seconds(10)))
    }

    func testNamedPidWaitsForTheQuickRetryOfAFailedInjection() {
        let deadline = start + .seconds(10)
        let once = failed(times: 1, at: start)  // retry at +1 s
        XCTAssertTrue(settling(once, .error, named: true, deadline: deadline))
        XCTAssertFalse(settling(once, .error, named: false, deadline: deadline), "only a pid named on the command line")
        XCTAssertTrue(settling(failed(times: 2, at: start), .error, named: true, deadline: deadline), "retry at +5 s")
        XCTAssertFalse(settling(failed(times: 3, at: start), .error, named: true, deadline: deadline),
                       "three attempts: on reports the error")
    }

    func testNamedPidDoesNotWaitForARetryAtOrAfterTheDeadline() {
        let once = failed(times: 1, at: start)  // retry at +1 s
        XCTAssertTrue(settling(once, .error, named: true, deadline: start + .milliseconds(1001)))
        XCTAssertFalse(settling(once, .error, named: true, deadline: start + .seconds(1)))
        var hopeless = ProviderAcquisition()
        hopeless.begin()
        hopeless.finish(.failed(retryable: false), now: start)  // retry in an hour
        XCTAssertFalse(settling(hopeless, .error, named: true, deadline: start + .seconds(10)))
    }

    // MARK: - Revival of a silent provider

    func testRevivalWaitsForTheGraceAfterAttach() {
        let acquisition = ProviderAcquisition()
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: nil, now: start + .seconds(10)), "not attached")
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(800)))
        XCTAssertTrue(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(801)))
    }

    func testRevivalOnceUntilItFails() {
        var acquisition = ProviderAcquisition()
        let later = start + .seconds(1)
        XCTAssertTrue(acquisition.reviveOnce())
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: later), "revived already")
        acquisition.begin()
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: later), "injecting")
        acquisition.finish(.failed(retryable: true), now: later)
        acquisition.reviveFailed()
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: later + .milliseconds(999)), "retry not due")
        XCTAssertTrue(acquisition.isRevivalDue(attachedAt: start, now: later + .seconds(1)))
    }

    func testRevivalOfARetiredProviderIsImmediate() {
        let acquisition = ProviderAcquisition()
        XCTAssertTrue(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(1), providerThread: false),
                      "no poll thread in a process this agent did not inject: at once")
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: start + .seconds(60), providerThread: true),
                       "a live poll thread answers by itself")
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(1), providerThread: nil),
                       "unknown: the grace applies")
    }

    func testRevivalAfterOwnInjectionWaitsForTheGrace() {
        var acquisition = ProviderAcquisition()
        acquisition.begin()
        acquisition.finish(.injected, now: start)
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(100), providerThread: false),
                       "just injected: its thread may not have started")
        XCTAssertTrue(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(801), providerThread: false))
    }

    func testRevivalWaitsForAStartupRecheck() {
        var acquisition = ProviderAcquisition()
        acquisition.awaitStartup(now: start + .seconds(1))
        XCTAssertFalse(acquisition.isRevivalDue(attachedAt: start, now: start + .seconds(1)))
        XCTAssertTrue(acquisition.isRevivalDue(attachedAt: start, now: start + .milliseconds(1250)))
    }
}
