import Hummingbird
import Logging
import MSMCore

/// The agent's HTTP endpoint: `/metrics` (Prometheus text 0.0.4) and a landing page at `/`.
/// Read-only: nothing reachable over the network changes what the agent does.
public enum MetricsHTTPServer {
    public struct Address: Sendable, CustomStringConvertible {
        public let host: String
        public let port: Int

        /// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback).
        public init(parsing text: String) throws {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                  (0...65535).contains(port) else {
                throw RuntimeError("invalid --listen address \"\(text)\": expected HOST:PORT, e.g. 127.0.0.1:9464")
            }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            self.host = host.isEmpty ? "127.0.0.1" : host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public static func make(address: Address, logger: Logger,
                            render: @escaping @Sendable (PrometheusRenderer.Format) async -> String) -> some ApplicationProtocol {
        let router = Router()
        router.get("/metrics") { request, _ -> Response in
            let format = PrometheusRenderer.Format.negotiate(accept: request.headers[.accept])
            let text = await render(format)
            return Response(status: .ok, headers: [.contentType: format.contentType],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("/") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: landingPage)))
        }
        return Application(router: router,
                           configuration: .init(address: .hostname(address.host, port: address.port),
                                                serverName: "ms-service-metric"),
                           logger: logger)
    }

    static let landingPage = """
        <!doctype html>
        <html><head><title>ms-service-metric</title></head>
        <body>
        <h1>ms-service-metric</h1>
        <p>vLLM profiling metrics collected with eBPF, without restarting the server.</p>
        <ul><li><a href="/metrics">/metrics</a> — Prometheus text format</li></ul>
        <p>Control: <code>sudo ms-service-metric status</code>.</p>
        </body></html>
        """
}
