import Foundation
import Logging
import MSMArtifacts
import MSMCore
import ServiceLifecycle

/// `ms-service-metric run`: the agent process. Loads the BPF object, serves /metrics and the
/// control socket, and runs until `off`, SIGTERM or SIGINT — after which every provider has
/// restored its functions and every uprobe is detached.
public enum AgentDaemon {
    /// `startCollecting`: false when started by `on`, which then sends its own request.
    public static func run(settings: Agent.Settings, initialPids: [Int32], startCollecting: Bool = true,
                           logger: Logger) async throws {
        let runtime = settings.runtime
        // Peers of the control socket and of HTTP may vanish mid-write; never die of SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        try runtime.prepare()
        if ControlSocketClient.isListening(runtime.socket) {
            throw RuntimeError("an agent is already running (\(runtime.socket)); use `ms-service-metric status` or `off`")
        }
        let address = try MetricsHTTPServer.Address(parsing: settings.listen)
        // Providers must be installable before any `exec` or attach.
        try runtime.installProvider()
        let collector = try BPFCollector(objectBytes: Artifacts.bpfObject, ringBytes: try ringBytes())
        let agent = try Agent(settings: settings, collector: collector, logger: logger)
        await agent.start()

        let pipe = EventPipe()
        let reader = try collector.startReading(sink: pipe)
        let aggregator = agent.aggregator
        let ingest = Task.detached {
            for await batch in pipe.batches { await aggregator.ingest(batch) }
        }

        let http = MetricsHTTPServer.make(address: address, logger: logger) { await agent.render(format: $0) }
        let service = AgentService(agent: agent, initialPids: initialPids, startCollecting: startCollecting,
                                   logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: http), .init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let control = try ControlSocketServer(path: runtime.socket) { request in await agent.handle(request) }
        // After `off` has released every target: no new control connections (a second `off`
        // must hear "not running", not be accepted by a daemon on its way out).
        await agent.onStop {
            control.close()
            Task { await group.triggerGracefulShutdown() }
        }
        try "\(getpid())\n".write(toFile: runtime.pidFile, atomically: true, encoding: .utf8)
        logger.info("agent running", metadata: ["pid": "\(getpid())", "listen": "\(address)", "config": "\(settings.configSource)"])
        defer {
            control.close()
            reader.stop()
            pipe.finish()
            ingest.cancel()
            unlink(runtime.pidFile)
        }
        try await group.run()
    }
}

/// $MS_SERVICE_METRIC_RING_BYTES: the ring buffer's size (a power of two from 4 KiB to 1 GiB;
/// default 16 MiB). Smaller saves kernel memory on a quiet node; the tests make it tiny to
/// fill it on purpose.
func ringBytes(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Int {
    guard let text = environment["MS_SERVICE_METRIC_RING_BYTES"] else { return BPFCollector.defaultRingBytes }
    guard let value = Int(text), value >= 4096, value <= 1 << 30, value & (value - 1) == 0 else {
        throw RuntimeError("MS_SERVICE_METRIC_RING_BYTES=\(text): expected a power of two from 4096 to 1073741824")
    }
    return value
}

/// Scans for targets until shutdown, then releases them (`off`).
struct AgentService: Service {
    let agent: Agent
    let initialPids: [Int32]
    let startCollecting: Bool
    let logger: Logger

    func run() async throws {
        if startCollecting {
            // No pids: every vLLM server and every process that carries the provider.
            let response = await agent.on(pids: initialPids, configPath: nil, timeout: 10)
            for line in response.lines { logger.info("\(line)") }
        }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await agent.scan()
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        let released = await agent.off()
        for line in released.lines { logger.info("\(line)") }
    }
}
