import Logging
import NIOCore

/// Custos's own connection to one target: for catalog questions (which table and column a result
/// column comes from), never on the client's session, so a client cannot see, slow or influence
/// them; and for `custos replay`. Requests run one at a time on the connection's event loop; a
/// failure closes the connection and the next request opens a new one. Unchecked Sendable: every
/// mutable member is touched only on `eventLoop` (``run(_:sink:)`` hops there).
final class BackendClient: BackendDelegate, @unchecked Sendable {
    /// What one request got back.
    struct Reply {
        var columns: [BackendMessage.Column] = []
        var rows: [[String?]] = []
        var error: ErrorFields?
    }

    private struct Request {
        var messages: [FrontendMessage]
        var promise: EventLoopPromise<Reply>
        /// Gets every message of the reply but ReadyForQuery, instead of the reply collecting them.
        var sink: (@Sendable (BackendMessage) -> Void)?
    }

    private enum State {
        case idle
        case connecting
        case authenticating(BackendAuthenticator)
        case ready
    }

    let eventLoop: any EventLoop
    private let target: PostgresTarget
    private let logger: Logger
    private var state = State.idle
    private var channel: (any Channel)?
    private let relay = BackendRelay()
    private var waiting = CircularBuffer<Request>()
    private var running: (request: Request, reply: Reply, timer: Scheduled<Void>)?

    private let applicationName: String
    /// Extra startup parameters (settings such as `default_transaction_read_only`).
    private let settings: [(String, String)]
    private let timeout: TimeAmount

    init(
        target: PostgresTarget, eventLoop: any EventLoop, logger: Logger, applicationName: String = "custos-catalog", settings: [(String, String)] = [],
        timeout: TimeAmount = .seconds(10)
    ) {
        self.target = target
        self.eventLoop = eventLoop
        self.logger = logger
        self.applicationName = applicationName
        self.settings = settings
        self.timeout = timeout
    }

    /// Runs `messages` (ending with Sync or a simple Query) and collects the reply up to ReadyForQuery.
    func run(_ messages: [FrontendMessage], sink: (@Sendable (BackendMessage) -> Void)? = nil) -> EventLoopFuture<Reply> {
        let promise = eventLoop.makePromise(of: Reply.self)
        // Called from any session's loop; the state is touched only on the client's own.
        eventLoop.execute {
            self.waiting.append(Request(messages: messages, promise: promise, sink: sink))
            self.advance()
        }
        return promise.futureResult
    }

    private func advance() {
        switch state {
        case .idle:
            guard !waiting.isEmpty else { return }
            connect()
        case .ready:
            guard running == nil, let request = waiting.popFirst(), let channel else { return }
            let timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] () -> Void in
                self?.fail("query timed out")
            }
            running = (request, Reply(), timer)
            var buffer = channel.allocator.buffer(capacity: 256)
            for message in request.messages { message.encode(into: &buffer) }
            channel.writeAndFlush(buffer, promise: nil)
            channel.read()
        case .connecting, .authenticating:
            break
        }
    }

    private func connect() {
        state = .connecting
        relay.delegate = self
        // Connecting and authenticating have a deadline too: a silent backend must not park
        // every session waiting for the catalog.
        eventLoop.assumeIsolated().scheduleTask(in: .seconds(10)) { [weak self] () -> Void in
            guard let self else { return }
            switch self.state {
            case .connecting, .authenticating: self.fail("backend connection not ready within 10 s")
            case .idle, .ready: break
            }
        }
        BackendConnector.connect(to: target, on: eventLoop, relay: relay, maxMessageSize: 1 << 26).assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let channel):
                self.channel = channel
                state = .authenticating(BackendAuthenticator(user: target.user, password: target.password))
                var buffer = channel.allocator.buffer(capacity: 128)
                let parameters = [
                    StartupPacket.Parameter("user", target.user), StartupPacket.Parameter("database", target.database),
                    StartupPacket.Parameter("application_name", applicationName),
                ] + settings.map { StartupPacket.Parameter($0.0, $0.1) }
                StartupPacket.startup(version: StartupPacket.protocol3, parameters: parameters).encode(into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
                channel.read()
            case .failure(let error):
                fail("cannot connect: \(error)")
            }
        }
    }

    /// Fails the request in progress and everything waiting, and drops the connection.
    private func fail(_ reason: String) {
        logger.warning("backend connection failed", metadata: ["connection": "\(target.connection.name)", "error": "\(reason)"])
        state = .idle
        relay.delegate = nil
        channel?.close(promise: nil)
        channel = nil
        let error = CatalogError(reason: reason)
        if let running {
            running.timer.cancel()
            running.request.promise.fail(error)
        }
        running = nil
        while let request = waiting.popFirst() { request.promise.fail(error) }
    }

    // MARK: BackendDelegate

    func backendFrame(_ frame: PostgresFrame) {
        guard let message = try? BackendMessage.decode(frame) else { return fail("unreadable backend message") }
        switch state {
        case .authenticating(var authenticator):
            switch message {
            case .authentication(let request):
                do {
                    switch try authenticator.handle(request) {
                    case .send(let reply):
                        state = .authenticating(authenticator)
                        var buffer = channel!.allocator.buffer(capacity: 128)
                        reply.encode(into: &buffer)
                        channel?.writeAndFlush(buffer, promise: nil)
                    case .wait, .done:
                        state = .authenticating(authenticator)
                    }
                } catch {
                    fail("\(error)")
                }
            case .readyForQuery:
                state = .ready
                advance()
            case .errorResponse(let fields):
                fail("backend refused the connection: \(fields.sqlstate ?? "?") \(fields.message ?? "")")
            default:
                break  // parameter status, key data, notices
            }
        case .ready:
            guard var current = running else { return }
            if case .copyInResponse = message, let channel {
                // Nothing here has COPY input to give: refuse it, so the backend ends the statement.
                var buffer = channel.allocator.buffer(capacity: 64)
                FrontendMessage.copyFail(message: "custos: no COPY input on this connection").encode(into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
            }
            if let sink = current.request.sink, !isReadyForQuery(message) {
                return sink(message)
            }
            switch message {
            case .rowDescription(let columns): current.reply.columns = columns
            case .dataRow(let values): current.reply.rows.append(values.map { $0.map { String(buffer: $0) } })
            case .errorResponse(let fields): current.reply.error = fields
            case .readyForQuery:
                current.timer.cancel()
                running = nil
                current.request.promise.succeed(current.reply)
                advance()
                return
            default: break
            }
            running = current
        case .idle, .connecting:
            break
        }
    }

    private func isReadyForQuery(_ message: BackendMessage) -> Bool {
        if case .readyForQuery = message { return true }
        return false
    }

    /// Ends the session (Terminate) and closes the connection.
    func close() {
        eventLoop.execute {
            guard let channel = self.channel else { return }
            var buffer = channel.allocator.buffer(capacity: 5)
            FrontendMessage.terminate.encode(into: &buffer)
            self.state = .idle
            self.relay.delegate = nil
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
            self.channel = nil
        }
    }

    func backendReadComplete() {
        channel?.read()
    }

    func backendClosed() {
        if case .idle = state { return }
        // An idle connection closing (the backend restarted, the gateway stops) is not a failure
        // worth a warning; the next request reconnects.
        if case .ready = state, running == nil, waiting.isEmpty {
            state = .idle
            relay.delegate = nil
            channel = nil
            return
        }
        fail("the connection closed")
    }

    func backendFailed(_ error: any Error) {
        fail("\(error)")
    }

    func backendWritabilityChanged(_ writable: Bool) {}
}

/// A catalog question could not be answered.
struct CatalogError: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}
