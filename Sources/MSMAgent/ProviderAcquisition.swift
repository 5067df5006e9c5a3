import CInjector
import Foundation
import MSMCore

/// Getting the provider into one target that does not carry it: wait while the process is
/// still starting, inject, and after a failure retry on a schedule; a provider that is mapped
/// but never answers is revived once. Pure: the agent runs the injections and passes `now`.
///
/// Retry schedule after a retryable failure (no safe point in time, another tracer, a ptrace
/// error, a thread that could not be attached): 1 s after the first (a busy server that
/// missed one 3 s window usually has a safe point moments later, and `on` waits that long for
/// a pid it was given), then every 5 s up
/// to the 60th attempt (about 5 minutes), then every minute. A process
/// with no safe point now (idle, blocked in a lock wait) usually gets one as soon as work
/// arrives. Any other failure is retried after an hour.
struct ProviderAcquisition: Sendable, Equatable {
    /// A process younger than this has no interpreter ready yet: injection waits.
    static let startupSeconds = 1.0
    /// How soon a process still starting is looked at again.
    static let startupRecheck: Duration = .milliseconds(250)
    static let firstRetry: Duration = .seconds(1)
    static let quickRetry: Duration = .seconds(5)
    static let quickRetryAttempts = 60
    static let slowRetry: Duration = .seconds(60)
    static let nonRetryable: Duration = .seconds(3600)
    /// `on` waits for a pid it was given whose injection failed while fewer injections than
    /// this were made: the first try and up to two retries.
    static let settleAttempts = 3
    /// A provider attached this recently may not have answered yet: it does not count as silent.
    static let reviveGrace: Duration = .milliseconds(800)

    enum Outcome: Sendable, Equatable {
        case injected
        /// Not CPython, or gone: the process is no target (the agent forgets it).
        case notATarget
        case failed(retryable: Bool)
    }

    /// An injection is running; the scan leaves the target alone.
    private(set) var injecting = false
    /// Injections finished (each outcome counts).
    private(set) var attempts = 0
    /// Not before this instant (nil: whenever). Kept after a success: the schedule of the
    /// failure or startup wait before it still applies.
    private(set) var retryAt: ContinuousClock.Instant?
    /// The one revival of a silent provider was made.
    private(set) var revived = false
    /// An injection into this process succeeded (its provider may still be starting).
    private(set) var injectedHere = false

    static func isStarting(ageSeconds: Double) -> Bool { ageSeconds < startupSeconds }

    /// How long one injection waits for a safe point: 3 s at first, 6 s from the second try.
    static func injectionTimeout(attempts: Int) -> Duration { attempts == 0 ? .seconds(3) : .seconds(6) }

    /// True when an attach (and, if needed, an injection) may be tried now.
    func isDue(now: ContinuousClock.Instant) -> Bool {
        !injecting && retryAt.map { now >= $0 } ?? true
    }

    /// True while `on` should wait before it reports on this target: an injection is running,
    /// the agent is busy with the process (`busy`), it has no provider yet and a next look is
    /// scheduled (still starting), or, for a pid named on the command line (`named`), an
    /// injection failed and its retry comes before `deadline`.
    func isSettling(state: TargetState, busy: Bool, named: Bool, deadline: ContinuousClock.Instant) -> Bool {
        if injecting || busy { return true }
        switch state {
        case .noProvider: return retryAt != nil
        case .error: return named && attempts < Self.settleAttempts && retryAt.map { $0 < deadline } ?? false
        case .attached, .exited: return false
        }
    }

    /// The process is too young to inject: look again shortly.
    mutating func awaitStartup(now: ContinuousClock.Instant) {
        retryAt = now + Self.startupRecheck
    }

    mutating func begin() {
        injecting = true
    }

    mutating func finish(_ outcome: Outcome, now: ContinuousClock.Instant) {
        injecting = false
        attempts += 1
        if outcome == .injected { injectedHere = true }
        if case let .failed(retryable) = outcome {
            retryAt = now + Self.retryDelay(attempts: attempts, retryable: retryable)
        }
    }

    /// True for an injection failure a later try may well not hit again: no safe point in time,
    /// another tracer, a ptrace error midway, or a thread that could not be attached (usually
    /// one being torn down at that moment).
    static func isRetryable(injectionCode code: Int32) -> Bool {
        [MSM_INJECT_TIMEOUT, MSM_INJECT_ALREADY_TRACED, MSM_INJECT_PTRACE_ERROR, MSM_INJECT_ATTACH_FAILED,
         MSM_INJECT_CANCELLED, MSM_INJECT_CALL_PENDING]
            .contains { code == Int32($0.rawValue) }
    }

    /// Delay before the next try after `attempts` finished injections, the last one failed.
    static func retryDelay(attempts: Int, retryable: Bool) -> Duration {
        guard retryable else { return nonRetryable }
        if attempts <= 1 { return firstRetry }
        return attempts < quickRetryAttempts ? quickRetry : slowRetry
    }

    /// True when a provider attached at `attachedAt` may be revived now if it is silent (the
    /// agent checks that it acknowledged no config): not revived yet (or its revival failed),
    /// due on the retry schedule, and
    /// - `providerThread` false (the process has no provider poll thread: an injected provider
    ///   retired it on an earlier `off`) in a process this agent did not inject: at once;
    /// - `providerThread` true: never (a live provider answers by itself);
    /// - otherwise (unknown, or injected here and its thread maybe not started yet): once
    ///   attached more than `reviveGrace` ago.
    /// `false` is the most permissive answer: what is not due with it is not due at all.
    func isRevivalDue(attachedAt: ContinuousClock.Instant?, now: ContinuousClock.Instant,
                      providerThread: Bool? = nil) -> Bool {
        guard !revived, let attachedAt, providerThread != true else { return false }
        let grace = providerThread == false && !injectedHere ? .zero : Self.reviveGrace
        guard now - attachedAt > grace else { return false }
        return isDue(now: now)
    }

    /// True the first time only: a silent provider is revived once (again only after a
    /// revival whose injection failed, see `reviveFailed`).
    mutating func reviveOnce() -> Bool {
        guard !revived else { return false }
        revived = true
        return true
    }

    /// The revival's injection failed (no safe point in time under load): the provider is
    /// still silent, so another revival is allowed once the retry schedule says so.
    mutating func reviveFailed() {
        revived = false
    }
}
