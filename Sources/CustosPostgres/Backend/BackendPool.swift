import CustosCore
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A backend connection between sessions: authenticated as its target's user, reset with
/// `DISCARD ALL` (as pgbouncer's `server_reset_query`), then idle in ``BackendPools`` until a
/// session with the same startup parameters takes it. Lives on its channel's event loop.
final class PooledBackend: BackendDelegate {
    /// What a session needs to present the connection as its own.
    struct Startup {
        /// The pool it belongs to: the connection target and the startup parameters it was opened with.
        var key: BackendPools.Key
        var processID: Int32
        var secret: Int32
        /// The ParameterStatus messages a fresh connection would send, as the server last reported them.
        var parameterStatus: [(name: String, frame: ByteBuffer)]
    }

    private enum State {
        /// Waiting for the two ReadyForQuery of `Sync` and `DISCARD ALL`.
        case resetting(readies: Int)
        case idle
        case gone
    }

    let channel: any Channel
    let relay: BackendRelay
    private(set) var startup: Startup
    private let pools: BackendPools
    private let settings: PostgresTarget.PoolSettings
    private let logger: Logger
    private var state = State.resetting(readies: 0)
    /// Bounds the reset, then the idle time. Its closure also keeps this object alive while only
    /// the relay's weak delegate refers to it.
    private var timer: Scheduled<Void>?

    init(channel: any Channel, relay: BackendRelay, startup: Startup, pools: BackendPools, settings: PostgresTarget.PoolSettings, logger: Logger) {
        self.channel = channel
        self.relay = relay
        self.startup = startup
        self.pools = pools
        self.settings = settings
        self.logger = logger
    }

    /// Takes the connection over from its session and resets it. The Sync ends any extended-query
    /// exchange the client left open; `DISCARD ALL` drops its prepared statements, portals, temp
    /// tables, settings, listens and advisory locks.
    func reset() {
        relay.delegate = self
        timer = channel.eventLoop.assumeIsolated().scheduleTask(in: .seconds(5)) { [self] in
            logger.info("pooled backend not reset in time; closed")
            close()
        }
        var buffer = channel.allocator.buffer(capacity: 32)
        FrontendMessage.sync.encode(into: &buffer)
        FrontendMessage.query("DISCARD ALL").encode(into: &buffer)
        channel.writeAndFlush(buffer, promise: nil)
        channel.read()  // the session may have stopped reading (a client that was not keeping up)
    }

    /// Hands the connection to a session: it becomes the relay's delegate from now on.
    func adopt(by delegate: any BackendDelegate) {
        timer?.cancel()
        timer = nil
        state = .gone
        relay.delegate = delegate
    }

    private func becomeIdle() {
        timer?.cancel()
        guard pools.put(self, settings: settings) else { return close() }
        state = .idle
        timer = channel.eventLoop.assumeIsolated().scheduleTask(in: settings.idleTimeout) { [self] in close() }
    }

    /// Ends the connection politely (Terminate) and forgets it.
    func close() {
        if case .gone = state { return }
        if case .idle = state { pools.remove(self) }
        state = .gone
        timer?.cancel()
        timer = nil
        relay.delegate = nil
        var buffer = channel.allocator.buffer(capacity: 5)
        FrontendMessage.terminate.encode(into: &buffer)
        channel.writeAndFlush(buffer).whenComplete { [channel] _ in channel.close(promise: nil) }
    }

    // MARK: BackendDelegate

    func backendFrame(_ frame: PostgresFrame) {
        let message = try? BackendMessage.decode(frame)
        switch (state, message) {
        case (_, .parameterStatus(let name, _)?):
            if let index = startup.parameterStatus.firstIndex(where: { $0.name == name }) {
                startup.parameterStatus[index].frame = frame.raw
            } else {
                startup.parameterStatus.append((name, frame.raw))
            }
        case (_, .noticeResponse?), (_, .notification?), (.resetting, .commandComplete?):
            break
        case (.resetting(let readies), .readyForQuery(let status)?):
            if readies == 0 {
                state = .resetting(readies: 1)
            } else if status == .idle {
                becomeIdle()
            } else {
                close()
            }
        default:
            // An error (the reset failed, or the server ends the connection), or anything else.
            if case .errorResponse(let fields)? = message {
                logger.info("pooled backend closed", metadata: ["sqlstate": "\(fields.sqlstate ?? "?")", "error": "\(fields.message ?? "")"])
            }
            close()
        }
    }

    func backendReadComplete() {
        channel.read()  // reads stay armed, so a server that goes away is noticed while idle
    }

    func backendClosed() {
        if case .idle = state { pools.remove(self) }
        state = .gone
        timer?.cancel()
        timer = nil
    }

    func backendFailed(_ error: any Error) {
        backendClosed()
    }

    func backendWritabilityChanged(_ writable: Bool) {}
}

/// The idle backend connections of every pooled target. A connection serves only sessions on its
/// own event loop (a channel is bound to one), so a session looks for one on its loop; the size
/// limit counts a target's idle connections over all loops.
final class BackendPools: Sendable {
    /// Which sessions may share a connection: same target, same startup parameters (those the
    /// client sent on, such as application_name, which `DISCARD ALL` resets back to).
    struct Key: Hashable, Sendable {
        var connection: String
        /// `name=value`, compared as bytes: settings that differ only in Unicode normalization
        /// (a search_path naming `"café"` two ways) are different settings to PostgreSQL.
        var parameters: [ExactText]

        init(connection: String, parameters: [String]) {
            self.connection = connection
            self.parameters = parameters.map(ExactText.init)
        }
    }

    private struct Slot: Hashable {
        var loop: ObjectIdentifier
        var key: Key
    }

    private struct Entry {
        var id: ObjectIdentifier
        var backend: NIOLoopBound<PooledBackend>
    }

    private struct State {
        var idle: [Slot: [Entry]] = [:]
        var counts: [String: Int] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// The most recently idled connection for `key` on `eventLoop` (warm caches), if any.
    func take(_ key: Key, on eventLoop: any EventLoop) -> PooledBackend? {
        let slot = Slot(loop: ObjectIdentifier(eventLoop), key: key)
        let entry: Entry? = state.withLockedValue { state in
            guard let entry = state.idle[slot]?.popLast() else { return nil }
            state.counts[key.connection, default: 1] -= 1
            return entry
        }
        return entry?.backend.value
    }

    /// Keeps `backend` unless its target already has `settings.size` idle connections.
    func put(_ backend: PooledBackend, settings: PostgresTarget.PoolSettings) -> Bool {
        let key = backend.startup.key
        let entry = Entry(id: ObjectIdentifier(backend), backend: NIOLoopBound(backend, eventLoop: backend.channel.eventLoop))
        let slot = Slot(loop: ObjectIdentifier(backend.channel.eventLoop), key: key)
        return state.withLockedValue { state in
            guard state.counts[key.connection, default: 0] < settings.size else { return false }
            state.counts[key.connection, default: 0] += 1
            state.idle[slot, default: []].append(entry)
            return true
        }
    }

    /// Forgets an idle connection (closed, timed out).
    func remove(_ backend: PooledBackend) {
        let slot = Slot(loop: ObjectIdentifier(backend.channel.eventLoop), key: backend.startup.key)
        state.withLockedValue { state in
            guard let index = state.idle[slot]?.firstIndex(where: { $0.id == ObjectIdentifier(backend) }) else { return }
            state.idle[slot]!.remove(at: index)
            state.counts[slot.key.connection, default: 1] -= 1
        }
    }

    /// Closes every idle connection (at shutdown).
    func closeAll() {
        let entries = state.withLockedValue { state in
            defer { state = State() }
            return state.idle.values.flatMap { $0 }
        }
        for entry in entries {
            entry.backend.eventLoop.execute { entry.backend.value.close() }
        }
    }
}
