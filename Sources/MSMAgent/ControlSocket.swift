import CPosixShim
import Foundation

/// The agent's control socket: a Unix stream socket, mode 0600 in the root-owned runtime
/// directory, that only accepts peers running as root (SO_PEERCRED). Blocking I/O on its own
/// thread: the control path handles a handful of requests per minute, so a plain accept loop
/// is easier to read than an event loop here.
public final class ControlSocketServer: @unchecked Sendable {
    private let path: String
    private let fd: Int32
    private let handler: @Sendable (ControlRequest) async -> ControlResponse
    private var thread: Thread?

    public init(path: String, handler: @escaping @Sendable (ControlRequest) async -> ControlResponse) throws {
        self.path = path
        self.handler = handler
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RuntimeError("cannot create the control socket: \(String(cString: strerror(errno)))") }
        var address = try unixAddress(path)
        let oldMask = umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(oldMask)
        guard bound == 0, chmod(path, 0o600) == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw RuntimeError("cannot listen on \(path): \(message)")
        }
        let thread = Thread { [self] in self.acceptLoop() }
        thread.name = "msm-control"
        self.thread = thread
        thread.start()
    }

    private let closeLock = NSLock()
    private var closed = false

    /// Stops accepting (the path goes first, so a client arriving now is told that no agent
    /// runs instead of being accepted by one that is shutting down). Connections already
    /// accepted still get their answers. Idempotent.
    public func close() {
        closeLock.withLock {
            guard !closed else { return }
            closed = true
            unlink(path)
            shutdown(fd, Int32(SHUT_RDWR))
            Glibc.close(fd)
        }
    }

    private func acceptLoop() {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            // One thread per connection: a long `on` (waiting for injections and acks) must
            // not hold up `status` or `off`.
            let worker = Thread { [self] in self.serve(client) }
            worker.name = "msm-control-client"
            worker.start()
        }
    }

    private func serve(_ client: Int32) {
        defer { Glibc.close(client) }
        var peer: uid_t = 1
        guard msm_peer_uid(client, &peer) == 0, peer == 0 else {
            writeLine(client, ControlResponse(exitCode: 1, lines: ["ms-service-metric: must run as root (try sudo)"]))
            return
        }
        // A peer that connects and closes without a request (`isListening` probes) gets no answer.
        guard let line = readLine(client) else { return }
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: line) else {
            writeLine(client, ControlResponse(exitCode: 2, lines: ["ms-service-metric: malformed control request"]))
            return
        }
        let box = ResponseBox()
        let done = DispatchSemaphore(value: 0)
        let handler = self.handler
        Task {
            box.response = await handler(request)
            done.signal()
        }
        done.wait()
        writeLine(client, box.response ?? ControlResponse(exitCode: 1, lines: ["ms-service-metric: internal error"]))
    }

    private final class ResponseBox: @unchecked Sendable { var response: ControlResponse? }
}

/// The CLI side of the control socket.
public enum ControlSocketClient {
    /// Sends one request; nil when no agent listens on `path`.
    public static func send(_ request: ControlRequest, to path: String) throws -> ControlResponse? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RuntimeError("cannot create a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = try unixAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { return nil }
        var data = try JSONEncoder().encode(request)
        data.append(0x0A)
        guard writeAll(fd, data) else { return nil }
        guard let line = readLine(fd) else {
            throw RuntimeError("the agent closed the control connection without answering (see its log)")
        }
        return try JSONDecoder().decode(ControlResponse.self, from: line)
    }

    public static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0, var address = try? unixAddress(path) else { return false }
        defer { close(fd) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }
}

private func unixAddress(_ path: String) throws -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        throw RuntimeError("socket path too long: \(path)")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in bytes.enumerated() { raw[index] = byte }
    }
    return address
}

private func readLine(_ fd: Int32) -> Data? {
    var data = Data()
    var byte: UInt8 = 0
    while data.count < 16 << 20 {
        let count = read(fd, &byte, 1)
        if count < 0, errno == EINTR { continue }
        if count <= 0 { return data.isEmpty ? nil : data }
        if byte == 0x0A { return data }
        data.append(byte)
    }
    return nil
}

private func writeAll(_ fd: Int32, _ data: Data) -> Bool {
    data.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            // MSG_NOSIGNAL: a client that went away must not kill the agent with SIGPIPE.
            let written = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            if written < 0, errno == EINTR { continue }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }
}

private func writeLine(_ fd: Int32, _ response: ControlResponse) {
    guard var data = try? JSONEncoder().encode(response) else { return }
    data.append(0x0A)
    _ = writeAll(fd, data)
}
