import Foundation
import Logging
import MSMArtifacts
import MSMCore
import CInjector
import CMSMABI
import Synchronization

/// The long-running agent: owns the targets, their uprobes, the control file and the
/// aggregation actor, and answers the CLI's commands. All state changes go through this
/// actor; the kernel side and the HTTP endpoint only read from it.
public actor Agent {
    public struct Settings: Sendable {
        public var runtime: RuntimeDirectory
        public var listen: String
        public var configSource: ConfigSource
        public var defaultConfigText: String
        /// Watch-all mode: which discovered processes may be targets.
        public var discovery: DiscoveryFilter

        public init(runtime: RuntimeDirectory, listen: String, configSource: ConfigSource, defaultConfigText: String,
                    discovery: DiscoveryFilter = DiscoveryFilter()) {
            self.runtime = runtime
            self.listen = listen
            self.configSource = configSource
            self.defaultConfigText = defaultConfigText
            self.discovery = discovery
        }
    }

    /// The actor's own thread (see ThreadExecutor): its /proc reads and uprobe calls block.
    private nonisolated let executor = ThreadExecutor(name: "msm-agent")
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    private let settings: Settings
    private nonisolated let collector: BPFCollector
    public nonisolated let aggregator: Aggregator
    private let logger: Logger
    private var config: SymbolConfig
    private var configSource: ConfigSource
    private var generation: UInt64 = 0
    private var enabled = true
    /// Processes asked for with --pid (their descendants are targets too).
    private var roots: Set<Int32> = []
    /// `on` without --pid: every process on the host that carries the provider.
    private var watchAll = false
    /// Which of those discovered processes may be targets (--only-uid, --only-cgroup).
    private var discovery: DiscoveryFilter
    private var targets: [Int32: Target] = [:] {
        didSet {
            let attached = targets.values.filter { $0.state == .attached }.count
            scrapeState.withLock { $0.attachedTargets = attached }
        }
    }
    /// What a scrape needs besides the aggregator, outside the actor: a scan or an attach can
    /// hold the actor for seconds (a busy vLLM process's /proc files wait on its mmap lock),
    /// and /metrics must not wait for them.
    private nonisolated let scrapeState = Mutex(ScrapeState())
    private var stopRequested: (@Sendable () -> Void)?
    /// Processes seen and found not to be CPython (pid → start time): not targets.
    private var ignored: [Int32: UInt64] = [:]
    /// /proc as of the last scan; cmdline and maps are not read again on every scan.
    private var processes = ProcessScanCache()
    /// Targets in other mount namespaces read their control file there: the agent writes a
    /// copy at the same path inside their root (TargetRoot: no symlink followed).
    private var controlFileCopies: Set<Int32> = []
    private var lastControlData: Data?
    /// Pids with an attach or injection in progress (the actor is re-entered across awaits).
    private var busy: Set<Int32> = []
    /// The last scan could not read /proc (logged once per streak).
    private var procUnreadable = false
    /// Series announcements lost in a full ring buffer: per target, its orphan samples when its
    /// provider was last asked to announce again, and when; the request counters written to
    /// the control file (`resend`, by the pid the provider reports for itself).
    private var orphansAtResend: [Int32: (count: UInt64, at: ContinuousClock.Instant)] = [:]
    private var resend: [String: UInt64] = [:]
    /// Injections in progress, by pid: `off` (and so SIGTERM, SIGINT) asks each to stop and
    /// waits for it before releasing the targets.
    private var inFlight: [Int32: InjectionCancellation] = [:]
    private var configured = false

    public init(settings: Settings, collector: BPFCollector, logger: Logger) throws {
        self.settings = settings
        self.collector = collector
        self.logger = logger
        configSource = settings.configSource
        discovery = settings.discovery
        config = try Agent.loadConfig(settings.configSource, defaultText: settings.defaultConfigText)
        aggregator = Aggregator()
        generation = settings.runtime.previousGeneration()
        for warning in config.warnings { logger.warning("config: \(warning)") }
    }

    /// Called by `off` once providers have restored their functions: stops the service.
    public func onStop(_ action: @escaping @Sendable () -> Void) { stopRequested = action }

    /// Gives the aggregator its first config; call once before ingesting.
    public func start() async {
        guard !configured else { return }
        configured = true
        await aggregator.configure(config)
    }

    // MARK: - Commands

    public func handle(_ request: ControlRequest) async -> ControlResponse {
        switch request.command {
        case .on:
            if let filter = request.discovery, request.pids?.isEmpty ?? true { discovery = filter }
            return await on(pids: request.pids ?? [], configPath: request.config, timeout: request.timeoutSeconds ?? 10)
        case .off:
            let response = await off()
            stopRequested?()
            return response
        case .restart: return await restart(configPath: request.config)
        case .status: return await status()
        }
    }

    public func on(pids: [Int32], configPath: String?, timeout: Double) async -> ControlResponse {
        for pid in pids where !ProcessTable.exists(pid) {
            return ControlResponse(exitCode: 1, lines: ["ms-service-metric: no process with pid \(pid)"])
        }
        var lines: [String] = []
        if let configPath, ConfigSource.file(configPath) != configSource {
            let reload = await restart(configPath: configPath)
            guard reload.exitCode == 0 else { return reload }
            lines += reload.lines
        }
        enabled = true
        if pids.isEmpty { watchAll = true } else { roots.formUnion(pids) }
        do {
            try publishControlFile()
        } catch {
            return ControlResponse(exitCode: 1, lines: ["ms-service-metric: \(error)"])
        }
        let wanted = pids.isEmpty ? nil : Set(pids)
        await scan()
        // Injections run concurrently (and a process younger than a second is injected once
        // its interpreter is up): wait for them before judging which targets are live. A
        // process the service loop's scan is attaching has no entry in `targets` until its
        // maps are read: it is waited for through `busy`.
        let settleBy = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < settleBy, busy.contains(where: { isWithin($0, wanted) })
            || targets.values.contains(where: { target in
                target.acquisition.isSettling(state: target.state, busy: false,
                                              named: wanted?.contains(target.pid) == true, deadline: settleBy)
                    && isWithin(target.pid, wanted)
            }) {
            try? await Task.sleep(for: .milliseconds(50))
            await scan()
        }
        let pending = await waitForAcks(of: attachedPids(within: wanted), timeout: timeout)
        lines += targetLines(within: wanted, pending: pending)
        if targets.isEmpty || (wanted != nil && attachedPids(within: wanted).isEmpty) {
            lines.append("no Python process to collect from yet (collection starts as soon as one appears)")
        }
        lines.append("metrics on http://\(settings.listen)/metrics")
        // A pid named on the command line that cannot be collected from is a failure.
        let refused = pids.filter { targets[$0]?.state == .error }
        return ControlResponse(exitCode: pending.isEmpty && refused.isEmpty ? 0 : 1, lines: lines)
    }

    public func restart(configPath: String?) async -> ControlResponse {
        let source = configPath.map(ConfigSource.file) ?? configSource
        let newConfig: SymbolConfig
        do {
            newConfig = try Agent.loadConfig(source, defaultText: settings.defaultConfigText)
        } catch {
            return ControlResponse(exitCode: 1, lines: ["\(error)", "ms-service-metric: config not changed; still using \(configSource)"])
        }
        config = newConfig
        configSource = source
        await aggregator.reconfigure(newConfig)
        let skipped: [String]
        do {
            skipped = try publishControlFile()
        } catch {
            return ControlResponse(exitCode: 1, lines: ["ms-service-metric: \(error)"])
        }
        let pending = await waitForAcks(of: attachedPids(within: nil), timeout: 10)
        var lines = ["config \(source) loaded (\(newConfig.entries.count) symbols, generation \(generation))"] + skipped
        lines += newConfig.warnings.map { "warning: \($0)" }
        lines += pending.sorted().map { "pid \($0): provider did not acknowledge the new config yet" }
        return ControlResponse(exitCode: pending.isEmpty ? 0 : 1, lines: lines)
    }

    /// Providers restore every original function (they acknowledge), then the uprobes go.
    public func off() async -> ControlResponse {
        guard enabled else { return ControlResponse(exitCode: 0, lines: ["ms-service-metric: off"]) }
        enabled = false
        var lines: [String] = []
        // An injection stops at its next safe moment (before the code runs: nothing changed;
        // during the call: the thread is released and restores itself), within 50 ms.
        if !inFlight.isEmpty {
            let stopping = inFlight.keys.sorted()
            for cancellation in inFlight.values { cancellation.cancel() }
            let deadline = ContinuousClock.now + .seconds(5)
            while !inFlight.isEmpty && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
            let line = "injection into pid \(stopping.map(String.init).joined(separator: ", ")) stopped before releasing the targets"
                + (inFlight.isEmpty ? "" : " (still running after 5 s: \(inFlight.keys.sorted()))")
            logger.info("\(line)")
            lines.append(line)
        }
        if let skipped = try? publishControlFile() {
            lines += skipped
            let pending = await waitForAcks(of: attachedPids(within: nil), timeout: 3)
            lines += pending.sorted().map {
                "pid \($0): no acknowledgement; its provider restores itself when the probe is detached"
            }
        }
        let released = targets.values.filter { $0.link != nil }.count
        detachAll()
        removeControlCopies()
        try? FileManager.default.removeItem(atPath: settings.runtime.controlFile)
        lines.append("ms-service-metric: off (\(released) targets released)")
        return ControlResponse(exitCode: 0, lines: lines)
    }

    public func status() async -> ControlResponse {
        await updateKernelStats()
        let snapshot = await aggregator.snapshot()
        let report = StatusReport(
            snapshot: snapshot,
            agent: AgentFacts(pid: getpid(), listen: settings.listen, configPath: configSource.description,
                              generation: generation),
            targets: targets.values.sorted { $0.pid < $1.pid }.map(\.statusFacts))
        let json = (try? report.jsonData()).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return ControlResponse(exitCode: 0, lines: report.renderTable().split(separator: "\n").map(String.init),
                               statusJSON: json)
    }

    /// /metrics. Not isolated to the actor (see `scrapeState`).
    public nonisolated func render(format: PrometheusRenderer.Format = .text004) async -> String {
        let start = ContinuousClock.now
        await updateKernelStats()
        let snapshot = await aggregator.snapshot()
        let (attached, previous) = scrapeState.withLock { ($0.attachedTargets, $0.lastScrapeSeconds) }
        let context = PrometheusRenderer.Context(
            version: AgentVersion.version, targets: attached, previousScrapeDuration: previous)
        let text = PrometheusRenderer.render(snapshot, context: context, format: format)
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        scrapeState.withLock { $0.lastScrapeSeconds = seconds }
        return text
    }

    private nonisolated func updateKernelStats() async {
        let stats = collector.kernelStats()
        await aggregator.setKernelStats(hits: stats.hits, drops: stats.drops, truncated: stats.truncated,
                                        readErrors: stats.readErrors)
    }

    // MARK: - Targets

    /// Finds new target processes (descendants of the roots, or every provider process when
    /// watching all), attaches to those that carry the provider, and retires exited ones.
    public func scan() async {
        guard enabled else { return }
        // An unreadable /proc (no file descriptor left, no memory) says nothing about which
        // processes exist: nothing is retired or attached until it can be read again.
        if let failure = processes.refresh() {
            if !procUnreadable { logger.warning("cannot read /proc (\(failure)); targets are kept as they are until it can be read") }
            procUnreadable = true
            return
        }
        if procUnreadable { logger.info("/proc readable again") }
        procUnreadable = false
        // Ignored processes that are gone (or whose pid was reused) need no entry any more.
        ignored = ignored.filter { processes.startTime(of: $0.key) == $0.value }
        // Without --pid: every `vllm serve` on the host (with its process tree) and every
        // process that already carries the provider.
        let named = processes.descendants(of: roots)
        let candidates: Set<Int32> = watchAll
            ? named.union(processes.descendants(of: processes.vllmServers()).union(processes.providerProcesses())
                .filter { named.contains($0) || targets[$0] != nil || discovery.admits(pid: $0) })
            : named

        for (pid, target) in targets where target.state != .exited {
            if processes.startTime(of: pid) != target.startTime {
                retire(pid)
            }
        }
        var toAttach: [ProcessFacts] = []
        var toRevive: [Int32] = []
        for pid in candidates.sorted() {
            guard let startTime = processes.startTime(of: pid), let parent = processes.parent(of: pid) else { continue }
            if ignored[pid] == startTime { continue }
            if !roots.contains(pid), ProcessRole.isPythonHelper(title: processes.title(of: pid)) {
                ignored[pid] = startTime
                continue
            }
            if let known = targets[pid], known.startTime == startTime {
                if known.acquisition.injecting { continue }
                switch known.state {
                case .noProvider, .error:
                    // Still starting up, or a retryable injection failure: try again when due.
                    if known.acquisition.isDue(now: .now) {
                        toAttach.append(attachFacts(pid: pid, parent: parent, startTime: startTime))
                    }
                case .attached:
                    if known.role.role == "main" || known.role.inheritsRank {
                        await reclassify(pid, parent: parent)
                    }
                    toRevive.append(pid)
                case .exited:
                    break
                }
                continue
            }
            toAttach.append(attachFacts(pid: pid, parent: parent, startTime: startTime))
        }
        // Concurrently: an injection waits (up to seconds) for a safe point in its target;
        // one process that never reaches one must not hold up the others.
        await withTaskGroup(of: Void.self) { group in
            for facts in toAttach { group.addTask { await self.attach(facts) } }
            for pid in toRevive { group.addTask { await self.reviveSilentProvider(pid) } }
        }
        await requestResendForOrphans()
        // Forget exited targets after a grace period: their last events are drained first.
        for (pid, target) in targets where target.state == .exited {
            if let retiredAt = target.retiredAt, ContinuousClock.now - retiredAt > .seconds(2) {
                targets[pid] = nil
                await aggregator.processExited(pid: pid)
            }
        }
    }

    /// A target whose samples name series it never announced lost announcements (a full ring
    /// buffer drops a JSON record like any other): its provider is asked, through the control
    /// file's `resend` counters (same generation: nothing is re-applied), to announce its
    /// series again; at most once a second per target, and only when new orphans came.
    private func requestResendForOrphans() async {
        let now = ContinuousClock.now
        var asked: [String] = []
        for (pid, orphans) in await aggregator.orphans() where targets[pid]?.state == .attached {
            if let last = orphansAtResend[pid], orphans.count <= last.count || now - last.at < .seconds(1) { continue }
            let key = String(orphans.selfPid ?? pid)
            resend[key, default: 0] += 1
            orphansAtResend[pid] = (orphans.count, now)
            asked.append("\(pid)")
            logger.info("asked the provider to announce its series again", metadata: [
                "pid": "\(pid)", "orphan_samples": "\(orphans.count)"])
        }
        guard !asked.isEmpty else { return }
        do { try publishControlFile(newGeneration: false) } catch { logger.warning("\(error)") }
    }

    /// Role and rank from a title; a worker takes its engine core's rank.
    private func roleOf(title: String, parent: Int32) -> ProcessRole {
        let role = ProcessRole.classify(title: title)
        if role.inheritsRank, let parent = targets[parent], parent.role.role == "engine_core" {
            return ProcessRole(role: role.role, dp: parent.dp, inheritsRank: true)
        }
        return role
    }

    /// A process attached before it set its title (a spawned engine core or worker is
    /// `python -c "from multiprocessing.spawn import ..."` for its first moments; under
    /// `exec` the agent attaches that early) gets its role and rank once the title tells
    /// them, and so does a worker whose engine core was classified after it. Its series
    /// move to the new rank (gauge values included, see Aggregator.setProcessInfo).
    private func reclassify(_ pid: Int32, parent: Int32) async {
        guard var target = targets[pid], target.state == .attached || target.state == .noProvider else { return }
        let title = processes.title(of: pid)
        let role = roleOf(title: title, parent: parent)
        guard role != target.role || role.dp != target.dp else { return }
        target.role = role
        target.dp = role.dp
        target.title = title
        targets[pid] = target
        logger.info("role", metadata: ["pid": "\(pid)", "role": "\(role.role)", "dp": "\(role.dp)"])
        await aggregator.setProcessInfo(pid: pid, dp: role.dp, role: role.role)
    }

    /// The role comes from the title at attach time: read it fresh (the scan's copy may be
    /// from before a retitle that left comm alone).
    private func attachFacts(pid: Int32, parent: Int32, startTime: UInt64) -> ProcessFacts {
        ProcessFacts(pid: pid, parent: parent, startTime: startTime, title: ProcessTable.title(pid))
    }

    private func attach(_ facts: ProcessFacts) async {
        guard busy.insert(facts.pid).inserted else { return }
        defer { busy.remove(facts.pid) }
        // `on` and the service loop scan concurrently: the other scan may have attached it
        // while this one waited.
        if let known = targets[facts.pid], known.startTime == facts.startTime, known.state == .attached { return }
        let role = roleOf(title: facts.title, parent: facts.parent)
        let dp = role.dp
        var target = targets[facts.pid].flatMap { $0.startTime == facts.startTime ? $0 : nil }
            ?? Target(pid: facts.pid, startTime: facts.startTime, title: facts.title, role: role, dp: dp)
        target.role = role
        target.dp = dp
        if let refusal = ProcessTable.userNamespaceRefusal(facts.pid) {
            target.state = .error
            target.detail = refusal
            target.acquisition.finish(.failed(retryable: false), now: .now)
            if targets[facts.pid]?.detail != refusal { logger.warning("\(refusal)") }
            targets[facts.pid] = target
            return
        }
        // Reading a big process's maps and registering its uprobes wait on its mmap lock,
        // seconds when a vLLM process is busy: off the actor, so that targets are attached in
        // parallel and status and /metrics answer meanwhile.
        let pid = facts.pid
        let identity = ProviderIdentity(providerDirectory: settings.runtime.providerDirectory)
        var found = await runOnDedicatedThread(named: "msm-attach") { () -> (ProviderMapping, ProviderIdentity.Verdict)? in
            ProcessTable.providerMapping(of: pid).map { ($0, identity.verdict(pid: pid, mapping: $0)) }
        }
        if found == nil {
            // The injection reports the library it saw mapped: no second maps read.
            if let mapping = await injectProvider(into: facts, target: &target) {
                found = (mapping, await runOnDedicatedThread(named: "msm-attach") { identity.verdict(pid: pid, mapping: mapping) })
            }
        }
        guard let (library, verdict) = found else {
            if ignored[facts.pid] != facts.startTime { targets[facts.pid] = target }
            return
        }
        // A process that maps a file named like the provider is a target only if the file
        // is our provider, or if the user named it (or an ancestor) with --pid.
        if case let .foreign(why) = verdict {
            guard isWithin(pid, roots) else {
                logger.warning("not a target", metadata: ["pid": "\(pid)", "why": "\(why); name it with --pid to collect from it anyway"])
                ignored[pid] = facts.startTime
                targets[pid] = nil
                return
            }
            logger.warning("collecting from a provider this agent did not build", metadata: ["pid": "\(pid)", "why": "\(why)"])
        }
        // The very file mapped (no path resolution in the target's tree), in any mount
        // namespace, even after it was replaced on disk.
        let path = library.mapFile(pid: pid)
        // The role decides the dp label: set it before the first event can arrive.
        await aggregator.setProcessInfo(pid: facts.pid, dp: dp, role: role.role)
        let attached = await runOnDedicatedThread(named: "msm-attach") { [collector] in
            Result { try Self.attachProbes(collector, pid: pid, path: path) }
        }
        do {
            let link = try attached.get()
            guard enabled else {
                link.detach()  // `off` ran meanwhile
                return
            }
            target.link = link
            target.state = .attached
            target.detail = ""
            target.libraryPath = library.path
            target.attachedAt = .now
            if target.origin == nil { target.origin = "exec" }
            logger.info("attached", metadata: ["pid": "\(facts.pid)", "role": "\(role.role)", "dp": "\(dp)"])
        } catch {
            target.state = .error
            target.detail = "\(error)"
            logger.error("cannot attach", metadata: ["pid": "\(facts.pid)", "error": "\(error)"])
        }
        targets[facts.pid] = target
    }

    /// The marker probe and the arming probe (which raises the provider's semaphore) on the
    /// provider library at `path` (as the target maps it).
    private static func attachProbes(_ collector: BPFCollector, pid: Int32, path: String) throws -> UprobeLink {
        let symbols = try ELFSymbolTable(path: path, names: [MSM_MARKER_SYMBOL, MSM_SEMAPHORE_SYMBOL, MSM_ARM_SYMBOL])
        let marker = try symbols.symbol(named: MSM_MARKER_SYMBOL)
        let semaphore = try symbols.symbol(named: MSM_SEMAPHORE_SYMBOL)
        let arm = try? symbols.symbol(named: MSM_ARM_SYMBOL)
        return try collector.attach(pid: pid, libraryPath: path, markerOffset: marker.fileOffset,
                                    armOffset: arm?.fileOffset, semaphoreOffset: semaphore.fileOffset)
    }

    /// Gets the provider into a CPython process that does not carry it (ptrace injection at
    /// a safe point). Returns the provider library's path (as the target sees it) when it is
    /// now mapped. Processes that are not CPython are remembered and skipped, unless they were
    /// named with --pid.
    private func injectProvider(into facts: ProcessFacts, target: inout Target) async -> ProviderMapping? {
        guard !ProviderAcquisition.isStarting(ageSeconds: ProcessTable.ageSeconds(facts)) else {
            // A process that is still starting has no interpreter ready yet: next scan.
            target.state = .noProvider
            target.detail = "starting; provider injection pending"
            target.acquisition.awaitStartup(now: .now)
            return nil
        }
        let pid = facts.pid
        // 3 s for a first try, longer for retries: a busy server (CPUs saturated) may need
        // more than one window to bring a thread to the safe point.
        let timeout = ProviderAcquisition.injectionTimeout(attempts: target.acquisition.attempts)
        target.acquisition.begin()
        targets[pid] = target
        let runtime = settings.runtime
        let cancellation = InjectionCancellation()
        inFlight[pid] = cancellation
        // A dedicated thread, not the concurrency pool: the injector blocks for up to its
        // timeout waiting for a safe point, and a few such waits (vLLM's helper processes)
        // would otherwise starve the pool that ingestion, status and scrapes run on.
        let outcome = await runOnDedicatedThread { () -> InjectionOutcome in
            do {
                let directory = try runtime.installProvider()
                return .injected(try Injector.injectProvider(pid: pid, providerDirectory: directory,
                                                             controlFile: runtime.controlFile, timeout: timeout,
                                                             cancellation: cancellation))
            } catch let error as InjectionError {
                return .failed(code: error.report.code, message: error.description)
            } catch {
                return .failed(code: Int32(MSM_INJECT_PTRACE_ERROR.rawValue), message: "\(error)")
            }
        }
        inFlight[pid] = nil
        switch outcome {
        case let .injected(report):
            target.acquisition.finish(.injected, now: .now)
            target.origin = "injected"
            target.python = report.pythonVersion
            if report.placement == "copied" || report.placement == "present" {
                // Another mount namespace: it reads its control file there.
                controlFileCopies.insert(pid)
                targets[pid] = target
                if let problem = writeControlCopy(pid) { target.detail = problem }
            }
            logger.info("provider injected", metadata: ["pid": "\(pid)", "python": "\(report.pythonVersion)",
                                                        "ms": "\(report.totalMilliseconds)"])
            if report.providerLibrary == nil {
                target.state = .noProvider  // looked at again on the next scan
                target.detail = "injected, but the provider library was not mapped within 3 s (see the target's stderr)"
            }
            return report.providerLibrary
        case let .failed(code, message):
            let isRoot = roots.contains(pid)
            if !isRoot, code == Int32(MSM_INJECT_NOT_CPYTHON.rawValue) || code == Int32(MSM_INJECT_NO_PROCESS.rawValue) {
                target.acquisition.finish(.notATarget, now: .now)
                ignored[pid] = facts.startTime  // not a Python process: not a target
                targets[pid] = nil
                return nil
            }
            target.state = .error
            target.detail = message
            let retryable = ProviderAcquisition.isRetryable(injectionCode: code)
            // Retried on ProviderAcquisition's schedule (after 1 s, then every 5 s for 5 minutes, then every minute).
            target.acquisition.finish(.failed(retryable: retryable), now: .now)
            logger.warning("cannot inject the provider", metadata: ["pid": "\(pid)", "error": "\(message)"])
            return nil
        }
    }

    /// A provider whose library is mapped but that never answers (an earlier injected
    /// provider retires its thread on `off`) is started again by injecting the bootstrap.
    private func reviveSilentProvider(_ pid: Int32) async {
        let now = ContinuousClock.now
        // Runs on every scan for every attached target: the cheap checks first (`false` is the
        // most permissive answer about the provider thread), the thread list (a comm read per
        // thread) only for a target that has acknowledged nothing.
        guard !busy.contains(pid), let known = targets[pid], known.state == .attached,
              known.acquisition.isRevivalDue(attachedAt: known.attachedAt, now: now, providerThread: false)
        else { return }
        // Claimed before the first suspension: `on` and the service loop scan concurrently,
        // and both must not inject into the same process (the second saw the first's ptrace).
        busy.insert(pid)
        defer { busy.remove(pid) }
        if (await aggregator.acknowledgedGenerations()[pid] ?? 0) > 0 { return }
        guard var target = targets[pid], target.state == .attached,
              target.acquisition.isRevivalDue(
                  attachedAt: target.attachedAt, now: now,
                  providerThread: ProcessTable.hasThread(pid, named: MSM_PROVIDER_THREAD_NAME)),
              target.acquisition.reviveOnce() else { return }
        targets[pid] = target
        guard let facts = ProcessTable.facts(pid) else { return }
        _ = await injectProvider(into: facts, target: &target)
        if target.state == .error {
            target.state = .attached  // still attached; detail tells why
            target.acquisition.reviveFailed()  // try again when the retry schedule allows
        }
        targets[pid] = target
    }

    /// Writes the control file's copy into a target's mount namespace; the problem (also
    /// logged and shown in the target's status) when that cannot be done safely, e.g. a
    /// container replaced the runtime directory by a symlink.
    private func writeControlCopy(_ pid: Int32) -> String? {
        guard controlFileCopies.contains(pid), let data = lastControlData else { return nil }
        let runtime = settings.runtime
        do {
            let directory = try TargetRoot(pid: pid).directory(runtime.path, create: false,
                                                              trust: .rootOnly(allowSticky: false))
            try directory.replaceFile((runtime.controlFile as NSString).lastPathComponent, data: data, mode: 0o644)
            if targets[pid]?.detail.hasPrefix(Self.copyProblemPrefix) == true { targets[pid]?.detail = "" }
            return nil
        } catch {
            let problem = "\(Self.copyProblemPrefix) (\(error)); this target gets no config changes until that is fixed"
            targets[pid]?.detail = problem
            logger.warning("pid \(pid): \(problem)")
            return "pid \(pid): \(problem)"
        }
    }

    private static let copyProblemPrefix = "control file not written into the target's mount namespace"

    /// Removes the control-file copies placed in other mount namespaces (after `off`).
    private func removeControlCopies() {
        let name = (settings.runtime.controlFile as NSString).lastPathComponent
        for pid in controlFileCopies {
            (try? TargetRoot(pid: pid).directory(settings.runtime.path, create: false, trust: .any))?.remove(name)
        }
        controlFileCopies.removeAll()
    }

    private func retire(_ pid: Int32) {
        guard var target = targets[pid] else { return }
        target.link?.detach()
        target.link = nil
        target.state = .exited
        target.retiredAt = .now
        targets[pid] = target
        controlFileCopies.remove(pid)
        orphansAtResend[pid] = nil
        logger.info("target exited", metadata: ["pid": "\(pid)"])
    }

    /// Every uprobe at once (see UprobeLink.detachAll: each removal waits for a grace period).
    private func detachAll() {
        UprobeLink.detachAll(targets.values.compactMap(\.link))
        for pid in targets.keys {
            targets[pid]?.link = nil
            if targets[pid]?.state == .attached { targets[pid]?.state = .exited }
        }
    }

    private func attachedPids(within wanted: Set<Int32>?) -> [Int32] {
        targets.values.filter { $0.state == .attached }.map(\.pid).filter { isWithin($0, wanted) }
    }

    /// True when `wanted` is nil (every target) or holds the pid or one of its ancestors.
    private func isWithin(_ pid: Int32, _ wanted: Set<Int32>?) -> Bool {
        guard let wanted else { return true }
        return wanted.contains(pid) || isDescendant(pid, of: wanted)
    }

    private func isDescendant(_ pid: Int32, of ancestors: Set<Int32>) -> Bool {
        var current = pid
        for _ in 0..<64 {
            guard let parent = ProcessTable.statFields(current)?.parent, parent > 1 else { return false }
            if ancestors.contains(parent) { return true }
            current = parent
        }
        return false
    }

    /// Waits until every pid has acknowledged the current generation (or exited); returns
    /// those that did not in time.
    private func waitForAcks(of pids: [Int32], timeout: Double) async -> Set<Int32> {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        var pending = Set(pids)
        var lastScan = ContinuousClock.now
        while !pending.isEmpty {
            if ContinuousClock.now - lastScan > .milliseconds(250) {
                // Revives silent providers and picks up processes while the caller waits.
                await scan()
                lastScan = .now
            }
            let acknowledged = await aggregator.acknowledgedGenerations()
            pending = pending.filter { pid in
                ProcessTable.exists(pid) && (acknowledged[pid] ?? 0) < generation
            }
            if pending.isEmpty || ContinuousClock.now > deadline { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return pending
    }

    private func targetLines(within wanted: Set<Int32>?, pending: Set<Int32>) -> [String] {
        targets.values.sorted { $0.pid < $1.pid }.compactMap { target in
            guard isWithin(target.pid, wanted) else { return nil }
            switch target.state {
            case .attached where pending.contains(target.pid):
                return "pid \(target.pid) (\(target.role.role), dp \(target.dp)): attached, provider did not acknowledge within the timeout"
            case .attached:
                return "pid \(target.pid) (\(target.role.role), dp \(target.dp)): collecting (provider \(target.origin ?? "exec"))"
            case .noProvider:
                return "pid \(target.pid): no provider yet (\(target.detail.isEmpty ? "pending" : target.detail))"
            case .error:
                return "pid \(target.pid): error: \(target.detail)"
            case .exited:
                return nil
            }
        }
    }

    /// Writes the control file and its copies; returns the copies that could not be written.
    /// `newGeneration`: false only for a change that providers need not apply (`resend`).
    @discardableResult
    private func publishControlFile(newGeneration: Bool = true) throws -> [String] {
        if newGeneration { generation += 1 }
        let file = ControlFile(config: config, generation: generation, enabled: enabled, agentPid: getpid(),
                               resend: resend)
        let data = try file.jsonData()
        lastControlData = data
        try settings.runtime.writeControlFile(data)
        return controlFileCopies.sorted().filter { targets[$0]?.state == .attached }.compactMap { writeControlCopy($0) }
    }

    /// The config of `source`; a file's reference-tool handlers are mapped onto the built-in
    /// entries (`defaultText`). Used by the agent and by `check-config`.
    public static func loadConfig(_ source: ConfigSource, defaultText: String) throws -> SymbolConfig {
        switch source {
        case let .file(path):
            // A reference-tool config's own handlers map onto the built-in metrics.
            return ReferenceHandlerMapping.apply(
                to: try ConfigParser.parse(yaml: try TrustedConfigFile.read(path), file: path),
                builtIns: try ConfigParser.parse(yaml: defaultText, file: ConfigSource.builtInName))
        case .builtIn: return try ConfigParser.parse(yaml: defaultText, file: ConfigSource.builtInName)
        }
    }
}

/// Runs blocking work on its own OS thread and resumes the caller with the result.
func runOnDedicatedThread<T: Sendable>(named name: String = "msm-inject",
                                       _ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: work()) }
        thread.name = name
        thread.start()
    }
}

enum InjectionOutcome: Sendable {
    case injected(InjectionReport)
    case failed(code: Int32, message: String)
}

/// See `Agent.scrapeState`.
struct ScrapeState {
    var attachedTargets = 0
    var lastScrapeSeconds: Double?
}

/// One process the agent looks after.
struct Target: Sendable {
    typealias State = TargetState

    let pid: Int32
    let startTime: UInt64
    var title: String
    var role: ProcessRole
    var dp: Int
    var state: State = .noProvider
    var detail = ""
    var libraryPath: String?
    var link: UprobeLink?
    var retiredAt: ContinuousClock.Instant?
    var attachedAt: ContinuousClock.Instant?
    /// How the provider got there: "exec" (or a plugin) or "injected" by this agent.
    var origin: String?
    var python: String?
    /// Injection, retry schedule and revival of the provider.
    var acquisition = ProviderAcquisition()

    init(pid: Int32, startTime: UInt64, title: String, role: ProcessRole, dp: Int) {
        self.pid = pid
        self.startTime = startTime
        self.title = title
        self.role = role
        self.dp = dp
    }

    var statusFacts: TargetFacts {
        TargetFacts(pid: pid, state: state, role: role.role, title: title,
                    provider: libraryPath == nil ? nil : origin, dp: dp, detail: detail,
                    python: python.map { $0.split(separator: "+").first.map(String.init) ?? $0 })
    }
}
