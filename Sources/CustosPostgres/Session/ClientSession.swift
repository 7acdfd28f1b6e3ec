import CustosCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// One client connection, from startup to close: authenticates the client by its token, opens the
/// backend with the gateway's credential, then proxies, passing every statement through the Gate
/// and the recorder. Lives on the client channel's event loop; the backend channel shares it.
final class ClientSession: ChannelInboundHandler {
    typealias InboundIn = ClientInbound
    typealias OutboundOut = ByteBuffer

    enum Phase {
        case awaitingStartup
        case awaitingPassword
        case verifyingToken
        case connectingBackend
        case authenticatingBackend(BackendAuthenticator)
        case awaitingBackendReady
        /// Proxying. `held` is set while a statement waits for its decision or its commit.
        case proxying
        case closed
    }

    let gateway: PostgresGateway
    var logger: Logger
    var phase: Phase = .awaitingStartup
    var context: ChannelHandlerContext!
    let events = SessionEvents()
    var client = SessionEvents.Client(address: "?", database: "", startupUser: "", applicationName: nil)
    var startupParameters: [StartupPacket.Parameter] = []
    var overTLS = false
    var identity: Identity?
    var target: PostgresTarget?
    var backend: (any Channel)?
    /// Replaced by the pooled connection's own relay when the session reuses one.
    var relay = BackendRelay()
    /// The backend as a pool sees it (key, process, reported parameters), when its target pools.
    var backendStartup: PooledBackend.Startup?
    var backendReused = false
    /// The backend's process id (for the record), once it has said it.
    var backendProcessID: Int32?
    var cancelKey: CancelRegistry.Key?
    var startupTimer: Scheduled<Void>?
    var expiryTimer: Scheduled<Void>?
    var opened = false
    var closeRecorded = false
    /// The session ends at the next ReadyForQuery (token expired mid-statement).
    var pendingExpiry = false

    // Proxying state (see ClientSession+Proxy.swift).
    var tracker = ResponseTracker()
    var statementCount = 0
    var preparedStatements: [ExactText: Prepared] = [:]
    var portals: [ExactText: Action] = [:]
    /// Statements prepared with SQL `PREPARE`, by name, as analysed (once the PREPARE succeeded).
    var sqlPrepared: [ExactText: StatementInfo] = [:]
    /// Statement strings holding a `PREPARE`, by number, until they complete.
    var pendingPrepares: [Int: [StatementInfo]] = [:]
    /// The client's transaction block failed at the gateway (a refused statement) while the
    /// backend's did not; the session answers as PostgreSQL does in a failed transaction.
    var abortedBlock = false
    /// A ROLLBACK TO SAVEPOINT was forwarded in a failed block: the next ReadyForQuery is healthy.
    var abortClearsAtReady = false
    /// A statement waiting for its decision or write-ahead commit; later client input queues behind it.
    var held: HeldStatement?
    /// Cancels the gateway sent on its own (row limit, policy timeout) that the server has not yet
    /// acted on: client input waits behind them, so that a late cancel cannot hit the next statement.
    var cancelsInFlight = 0
    /// Client input waits: a statement is held, or a cancel of the gateway's own is on its way.
    var inputPaused: Bool { held != nil || cancelsInFlight > 0 }
    /// Whether the recorder answered a write-ahead `append` before returning (see `submit`).
    var inlineCommit = InlineCommit.none
    var queued = CircularBuffer<PostgresFrame>()
    /// After a refused extended-protocol message, client messages are dropped until Sync, as PostgreSQL does.
    var skippingUntilSync = false
    // Masking and result capture (see ClientSession+Results.swift).
    /// What this identity gets masked, as of its latest statement (the policy can be reloaded).
    var maskingProfile = MaskingProfile.none
    var catalog: Catalog?
    /// Table OIDs the catalog could not resolve: their columns are redacted, not asked again.
    var catalogMisses: Set<UInt32> = []
    /// Row plans by portal, from the (client's or gateway's own) Describe of each portal.
    var portalPlans: [ExactText: RowPlan] = [:]
    /// Portals described since their latest Bind; an Execute of any other gets a Describe first.
    var describedPortals: Set<ExactText> = []
    /// The plan of the simple-protocol result set arriving now.
    var queryPlan: RowPlan?
    var copyPlan: CopyPlan?
    var readyCopyPlan: CopyPlan?
    /// `COPY … TO` statements by statement number, in order, for planning their output.
    var copyInfos: [Int: [CopyInfo]] = [:]
    var captures: [Int: ResultCapture] = [:]
    var rowContext: RowContext?
    /// Backend frames parked while the catalog answers.
    var pausedFrames: CircularBuffer<PostgresFrame>?
    let rowScratch = RowScratch()
    /// Rewritten (masked) rows waiting to be written, so that many rows cost one write; sent
    /// before anything else goes to the client, and at every flush.
    var clientBatch = ByteBuffer()
    /// Literal uses by statement text, for recording statements that touch masked columns.
    var literalUseCache: [ExactText: [LiteralUse]] = [:]
    var backendWritable = true
    var clientReadPending = false
    var backendReadPending = false
    var backendNeedsFlush = false
    var clientNeedsFlush = false

    init(gateway: PostgresGateway) {
        self.gateway = gateway
        self.logger = gateway.logger
        self.logger[metadataKey: "session.id"] = "\(events.sessionID)"
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        gateway.register(self, on: context.eventLoop)
        if let remote = context.channel.remoteAddress {
            client.address = "\(remote.ipAddress ?? "?"):\(remote.port ?? 0)"
        }
        startupTimer = context.eventLoop.assumeIsolated().scheduleTask(in: gateway.settings.startupTimeout) { [weak self] in
            guard let self, !self.opened, !self.isClosed else { return }
            self.refuse(sqlstate: "08P01", message: "startup not completed within the startup timeout")
        }
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .startup(let packet):
            handleStartup(packet)
        case .frame(let frame):
            switch phase {
            case .awaitingPassword:
                handlePassword(frame)
            case .proxying:
                clientFrame(frame)
            case .closed:
                break
            default:
                // Nothing may arrive while the gateway authenticates; PostgreSQL treats it the same.
                refuse(sqlstate: "08P01", message: "unexpected message before authentication completed")
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushBackend()
        flushClient()  // gateway-made replies (refusals) to what was just read
        requestClientRead()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, backendReadPending {
            backendReadPending = false
            backend?.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .closed = phase { return }
        // A client gone without Terminate, but at rest, leaves a clean backend as well.
        let pooled = releaseBackend()
        finish(outcome: "error", reason: "client disconnected", sqlstate: nil)
        pooled?.reset()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .closed = phase { return }
        if let wire = error as? WireError {
            logger.info("client protocol violation", metadata: ["error": "\(wire)"])
            refuse(sqlstate: "08P01", message: "protocol violation: \(wire)")
        } else if error is NIOSSLError {
            finish(outcome: "error", reason: "client TLS failure", sqlstate: "08P01")
        } else {
            finish(outcome: "error", reason: "client connection error", sqlstate: "08006")
        }
    }

    var isClosed: Bool {
        if case .closed = phase { return true }
        return false
    }

    // MARK: Startup and client authentication

    private func handleStartup(_ packet: StartupPacket) {
        guard case .awaitingStartup = phase else { return refuse(sqlstate: "08P01", message: "startup packet out of order") }
        switch packet {
        case .sslRequest:
            var answer = context.channel.allocator.buffer(capacity: 1)
            if let tls = gateway.settings.tls, !overTLS {
                answer.writeInteger(UInt8(ascii: "S"))
                context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
                do {
                    try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .first)
                    overTLS = true
                } catch {
                    finish(outcome: "error", reason: "TLS set-up failed", sqlstate: "08P01")
                }
            } else {
                answer.writeInteger(UInt8(ascii: "N"))
                context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
            }
        case .gssEncRequest:
            var answer = context.channel.allocator.buffer(capacity: 1)
            answer.writeInteger(UInt8(ascii: "N"))
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
        case .cancel(let processID, let secretKey):
            forwardCancel(CancelRegistry.Key(processID: processID, secret: secretKey))
        case .startup(_, let parameters):
            startupParameters = parameters
            let value = { (name: String) in parameters.first { $0.name == name }?.value }
            client.startupUser = value("user") ?? ""
            client.database = value("database") ?? client.startupUser
            client.applicationName = value("application_name")
            logger[metadataKey: "client.database"] = "\(client.database)"
            guard overTLS || (gateway.settings.allowCleartextOnLoopback && isLoopback(context.channel.remoteAddress)) else {
                return refuse(sqlstate: "28000", message: "Custos accepts a token only over TLS (use sslmode=require)")
            }
            phase = .awaitingPassword
            send(.authentication(.cleartextPassword), flush: true)
        }
    }

    private func handlePassword(_ frame: PostgresFrame) {
        guard case .password(var body) = (try? FrontendMessage.decode(frame)) ?? .flush else {
            return refuse(sqlstate: "08P01", message: "expected a password message")
        }
        guard let token = try? body.readCString(type: frame.type), !token.isEmpty else {
            return refuse(sqlstate: "28P01", message: "authentication failed: empty token")
        }
        phase = .verifyingToken
        let verifier = gateway.verifier
        context.eventLoop.makeFutureWithTask { () async -> Result<Identity, TokenError> in
            do throws(TokenError) {
                return .success(try await verifier.verify(token))
            } catch {
                return .failure(error)
            }
        }.assumeIsolated().whenSuccess { [self] result in
            guard case .verifyingToken = phase else { return }
            switch result {
            case .success(let identity): admit(identity)
            case .failure(let error): refuse(sqlstate: "28P01", message: "authentication failed: \(error)")
            }
        }
    }

    private func admit(_ identity: Identity) {
        self.identity = identity
        logger[metadataKey: "identity.sub"] = "\(identity.subject)"
        guard let target = gateway.targets[client.database] else {
            return refuse(sqlstate: "3D000", message: "connection \"\(client.database)\" does not exist")
        }
        self.target = target
        catalog = gateway.catalogs[client.database]
        maskingProfile = gateway.gate.masking(for: identity, on: target.connection)
        let decision = gateway.gate.authorize(identity, on: target.connection)
        guard decision.verdict == .allow else {
            return refuse(sqlstate: decision.sqlstate, message: decision.message ?? "not allowed")
        }
        // Settings every later decision rests on (how the backend reads SQL, whom it acts as) are
        // not the client's to choose at startup.
        if let refusal = startupParameters.lazy.compactMap({ GuardedSettings.refusal(startupParameter: $0.name, value: $0.value) }).first {
            return refuse(sqlstate: "0A000", message: refusal)
        }
        var parameters = [StartupPacket.Parameter("user", target.user), StartupPacket.Parameter("database", target.database)]
        // Session settings the client asked for travel on; identity-bearing ones are the gateway's.
        parameters += startupParameters.filter { !["user", "database", "replication"].contains($0.name) }
        if target.pool != nil {
            let key = BackendPools.Key(connection: target.connection.name, parameters: parameters.map { "\($0.name)=\($0.value)" }.sorted())
            if let pooled = gateway.pools.take(key, on: context.eventLoop) {
                return resume(on: pooled, decision: decision)
            }
            backendStartup = PooledBackend.Startup(key: key, processID: 0, secret: 0, parameterStatus: [])
        }
        phase = .connectingBackend
        relay.delegate = self
        BackendConnector.connect(to: target, on: context.eventLoop, relay: relay, maxMessageSize: Int(Int32.max))
            .assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    guard case .connectingBackend = phase else {
                        channel.close(promise: nil)
                        return
                    }
                    backend = channel
                    startBackendAuthentication(parameters: parameters, decision: decision)
                case .failure(let error):
                    logger.warning("backend unreachable", metadata: ["error": "\(error)"])
                    refuse(sqlstate: "08001", message: "could not connect to the backend of connection \"\(target.connection.name)\"")
                }
            }
    }

    var openDecision: Decision?

    private func startBackendAuthentication(parameters: [StartupPacket.Parameter], decision: Decision) {
        guard let target else { return }
        openDecision = decision
        phase = .authenticatingBackend(BackendAuthenticator(user: target.user, password: target.password))
        var buffer = context.channel.allocator.buffer(capacity: 128)
        StartupPacket.startup(version: StartupPacket.protocol3, parameters: parameters).encode(into: &buffer)
        backend?.writeAndFlush(buffer, promise: nil)
        backend?.read()
    }

    /// Backend messages during its authentication and until its first ReadyForQuery.
    func backendStartupFrame(_ frame: PostgresFrame) {
        switch phase {
        case .authenticatingBackend(var authenticator):
            guard let message = try? BackendMessage.decode(frame) else {
                return backendRefused("backend sent an unreadable message during authentication")
            }
            switch message {
            case .authentication(let request):
                do {
                    switch try authenticator.handle(request) {
                    case .send(let reply):
                        phase = .authenticatingBackend(authenticator)
                        var buffer = context.channel.allocator.buffer(capacity: 128)
                        reply.encode(into: &buffer)
                        backend?.writeAndFlush(buffer, promise: nil)
                    case .wait:
                        phase = .authenticatingBackend(authenticator)
                    case .done:
                        phase = .awaitingBackendReady
                        send(.authentication(.ok), flush: false)
                    }
                } catch {
                    backendRefused("\(error)")
                }
            case .errorResponse(let fields):
                backendRefused("backend refused the gateway credential: \(fields.sqlstate ?? "?") \(fields.message ?? "")")
            case .negotiateProtocolVersion:
                break
            default:
                backendRefused("backend sent an unexpected message during authentication")
            }
        case .awaitingBackendReady:
            guard let message = try? BackendMessage.decode(frame) else { return backendRefused("unreadable backend message") }
            switch message {
            case .backendKeyData(let processID, let secretKey):
                backendStartup?.processID = processID
                backendStartup?.secret = secretKey
                registerCancelKey(processID: processID, secret: secretKey)
            case .readyForQuery:
                sessionReady(readyFrame: frame)
            case .errorResponse(let fields):
                backendRefused("backend refused the session: \(fields.sqlstate ?? "?") \(fields.message ?? "")")
            case .parameterStatus(let name, let value):
                if !GuardedSettings.isSafe(name, value: value) {
                    // A database or role default: the analysis would misread this session's SQL.
                    logger.warning("backend session reads SQL differently from the analysis", metadata: ["setting": "\(name)", "value": "\(value)"])
                    return refuse(sqlstate: "0A000", message: Self.lexingRefusal(name, value))
                }
                backendStartup?.parameterStatus.append((name, frame.raw))
                writeToClient(frame.raw)
            default:
                writeToClient(frame.raw)
            }
        default:
            break
        }
    }

    /// Why a session whose backend reports `name` = `value` cannot go on.
    static func lexingRefusal(_ name: String, _ value: String) -> String {
        "Custos reads SQL with standard_conforming_strings on and client_encoding UTF8; the backend session has \(name) = \(value)"
    }

    /// Gives the client a key of the gateway's own for the backend's, so the backend's never leaves.
    func registerCancelKey(processID: Int32, secret: Int32) {
        backendProcessID = processID
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let key = gateway.cancelKeys.register(
            .init(
                host: target!.host, port: target!.port, processID: processID, secret: secret,
                cancelHeld: { loop.execute { bound.value.cancelHeldStatement() } }))
        cancelKey = key
        send(.backendKeyData(processID: key.processID, secretKey: key.secret), flush: false)
    }

    private func backendRefused(_ detail: String) {
        logger.warning("backend authentication failed", metadata: ["error": "\(detail)"])
        refuse(sqlstate: "08001", message: "the backend of connection \"\(target?.connection.name ?? client.database)\" refused the gateway")
    }

    /// The backend is ready: record the session's opening (write-ahead), then let the client in.
    func sessionReady(readyFrame: PostgresFrame) {
        guard let identity, let target, let decision = openDecision else { return }
        startupTimer?.cancel()
        phase = .proxying
        held = HeldStatement(stage: .awaitingCommit, frame: readyFrame)
        let draft = events.open(
            client: client, identity: identity, connection: target.connection, decision: decision,
            backend: backendProcessID.map { .init(processID: $0, reused: backendReused) })
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        gateway.recorder.append(draft) { result in
            loop.execute {
                let session = bound.value
                session.opened = result.isSuccess
                switch result {
                case .success:
                    session.held = nil
                    session.writeToClient(readyFrame.raw)
                    session.flushClient()
                    session.scheduleExpiry(identity.expiresAt)
                    session.drainQueue()
                case .failure(let error):
                    session.logger.error("store failure; session refused", metadata: ["error": "\(error)"])
                    session.refuse(sqlstate: "58030", message: "Custos cannot record this session: the store is unavailable")
                }
            }
        }
    }

    private func scheduleExpiry(_ expiresAt: Date) {
        guard gateway.settings.endSessionOnExpiry else { return }
        let skew = Double(gateway.settings.clockSkew.nanoseconds) / 1e9
        let remaining = expiresAt.timeIntervalSinceNow + skew
        expiryTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(max(0, remaining) * 1000))) { [weak self] in
            guard let self, !self.isClosed else { return }
            if self.tracker.isIdle && self.held == nil {
                self.endForExpiry()
            } else {
                self.pendingExpiry = true
            }
        }
    }

    func endForExpiry() {
        terminate(sqlstate: "28P01", message: "token expired; session ended", outcome: "error", reason: "token expired")
    }

    private func forwardCancel(_ key: CancelRegistry.Key) {
        defer { closeChannels() }
        guard let entry = gateway.cancelKeys.lookup(key) else { return }
        entry.cancelHeld?()
        Self.sendCancel(entry, on: context.eventLoop)
    }

    /// Sends a CancelRequest with the backend's own key on a new connection, as libpq does. The
    /// future completes once the server closed that connection (it has signalled the backend by
    /// then), or failed, or after 5 s.
    @discardableResult
    static func sendCancel(_ entry: CancelRegistry.Entry, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let bootstrap = ClientBootstrap(group: eventLoop).connectTimeout(.seconds(5))
        return bootstrap.connect(host: entry.host, port: entry.port).flatMap { channel in
            var buffer = channel.allocator.buffer(capacity: 16)
            StartupPacket.cancel(processID: entry.processID, secretKey: entry.secret).encode(into: &buffer)
            channel.writeAndFlush(buffer, promise: nil)
            let deadline = eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
            return channel.closeFuture.always { _ in deadline.cancel() }
        }.recover { _ in }
    }

    // MARK: Ending

    /// Refuses a connection attempt before a session exists: FATAL to the client, a failed attempt
    /// in the record, then close.
    func refuse(sqlstate: String, message: String) {
        guard !isClosed else { return }
        if opened {
            return terminate(sqlstate: sqlstate, message: message, outcome: "error", reason: message)
        }
        logger.info("connection refused", metadata: ["sqlstate": "\(sqlstate)", "reason": "\(message)"])
        recordRefusal(sqlstate: sqlstate, reason: message)
        sendFatal(sqlstate: sqlstate, message: message)
        phase = .closed
        closeChannels()
    }

    /// Ends an open session with a FATAL error.
    func terminate(sqlstate: String, message: String, outcome: String, reason: String) {
        guard !isClosed else { return }
        sendFatal(sqlstate: sqlstate, message: message)
        finish(outcome: outcome, reason: reason, sqlstate: sqlstate)
    }

    /// Records the session's end once and closes both sides.
    func finish(outcome: String, reason: String?, sqlstate: String?) {
        guard !isClosed else { return }
        phase = .closed
        // A session that ends mid-query (client gone, reset, shutdown) must not leave the query
        // running on the backend.
        if !tracker.isIdle, let cancelKey, let entry = gateway.cancelKeys.lookup(cancelKey) {
            Self.sendCancel(entry, on: context.eventLoop)
        }
        if opened, !closeRecorded {
            closeRecorded = true
            for statement in tracker.unfinished() {
                recordResult(statement, error: ErrorFields(severity: "ERROR", sqlstate: sqlstate ?? "08006", message: "session ended before the statement completed"))
            }
            dropApprovalHold()
            if let parked = held?.statement {
                recordResult(parked, error: ErrorFields(severity: "ERROR", sqlstate: sqlstate ?? "08006", message: "session ended before the statement was forwarded"))
            }
            gateway.recorder.appendLater(events.close(outcome: outcome, reason: reason, sqlstate: sqlstate, statements: statementCount))
        } else if !opened {
            recordRefusal(sqlstate: sqlstate ?? "08006", reason: reason ?? outcome)
        }
        closeChannels()
    }

    /// Records a connection attempt that never became a session, once.
    private func recordRefusal(sqlstate: String, reason: String) {
        guard !closeRecorded else { return }
        closeRecorded = true
        gateway.recorder.appendLater(
            events.refused(client: client, identity: identity, connection: target?.connection.name, sqlstate: sqlstate, reason: reason))
    }

    private func sendFatal(sqlstate: String, message: String) {
        send(.errorResponse(ErrorFields(severity: "FATAL", sqlstate: sqlstate, message: message)), flush: true)
    }

    func closeChannels() {
        phase = .closed
        gateway.unregister(self)
        startupTimer?.cancel()
        expiryTimer?.cancel()
        if let cancelKey { gateway.cancelKeys.remove(cancelKey) }
        relay.delegate = nil
        backend?.close(promise: nil)
        context.close(promise: nil)
    }

    // MARK: Writing

    func send(_ message: BackendMessage, flush: Bool) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        writeToClient(buffer)
        if flush { flushClient() }
    }

    func writeToClient(_ bytes: ByteBuffer) {
        emitClientBatch()
        context.write(wrapOutboundOut(bytes), promise: nil)
        clientNeedsFlush = true
    }

    func emitClientBatch() {
        guard clientBatch.readableBytes > 0 else { return }
        context.write(wrapOutboundOut(clientBatch), promise: nil)
        clientBatch = context.channel.allocator.buffer(capacity: 16 * 1024)
        clientNeedsFlush = true
    }

    func flushClient() {
        emitClientBatch()
        if clientNeedsFlush {
            clientNeedsFlush = false
            context.flush()
        }
    }

    private func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
}

/// A write-ahead `append` under way in `submit`, and its result if it completed before returning.
enum InlineCommit {
    case none
    case awaiting
    case done(Result<Void, RecorderError>)
}
