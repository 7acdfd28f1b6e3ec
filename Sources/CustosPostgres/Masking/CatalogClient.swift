import Logging
import NIOCore

/// The gateway's own connection to one target, for catalog questions (which table and column a
/// result column comes from). Never the client's session: a client cannot see, slow or influence
/// these queries. Requests run one at a time on the connection's event loop; a failure closes the
/// connection and the next request opens a new one. Unchecked Sendable: every mutable member is
/// touched only on `eventLoop` (``run(_:)`` hops there).
final class CatalogClient: BackendDelegate, @unchecked Sendable {
    /// What one request got back.
    struct Reply {
        var columns: [BackendMessage.Column] = []
        var rows: [[String?]] = []
        var error: ErrorFields?
    }

    private struct Request {
        var messages: [FrontendMessage]
        var promise: EventLoopPromise<Reply>
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

    init(target: PostgresTarget, eventLoop: any EventLoop, logger: Logger) {
        self.target = target
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// Runs `messages` (ending with Sync or a simple Query) and collects the reply up to ReadyForQuery.
    func run(_ messages: [FrontendMessage]) -> EventLoopFuture<Reply> {
        let promise = eventLoop.makePromise(of: Reply.self)
        // Called from any session's loop; the state is touched only on the client's own.
        eventLoop.execute {
            self.waiting.append(Request(messages: messages, promise: promise))
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
            let timer = eventLoop.assumeIsolated().scheduleTask(in: .seconds(10)) { [weak self] () -> Void in
                self?.fail("catalog query timed out")
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
            case .connecting, .authenticating: self.fail("catalog connection not ready within 10 s")
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
                    StartupPacket.Parameter("application_name", "custos-catalog"),
                ]
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
        logger.warning("catalog connection failed", metadata: ["connection": "\(target.connection.name)", "error": "\(reason)"])
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
                fail("backend refused the catalog connection: \(fields.sqlstate ?? "?")")
            default:
                break  // parameter status, key data, notices
            }
        case .ready:
            guard var current = running else { return }
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
        fail("the catalog connection closed")
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
