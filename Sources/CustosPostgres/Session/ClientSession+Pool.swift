import CustosCore
import NIOCore

/// Backend pooling (``BackendPools``): a session may start on a pooled connection, and leaves its
/// own to the pool when it ends at rest.
extension ClientSession {
    /// Starts the session on an idle pooled connection: the client sees what a fresh backend
    /// would have sent (its parameters, a key of its own, ReadyForQuery).
    func resume(on pooled: PooledBackend, decision: Decision) {
        pooled.adopt(by: self)
        backend = pooled.channel
        relay = pooled.relay
        backendStartup = pooled.startup
        backendReused = true
        openDecision = decision
        send(.authentication(.ok), flush: false)
        for status in pooled.startup.parameterStatus { writeToClient(status.frame) }
        registerCancelKey(processID: pooled.startup.processID, secret: pooled.startup.secret)
        var ready = context.channel.allocator.buffer(capacity: 6)
        BackendMessage.readyForQuery(.idle).encode(into: &ready)
        var body = ready
        body.moveReaderIndex(forwardBy: 5)
        sessionReady(readyFrame: PostgresFrame(type: UInt8(ascii: "Z"), body: body, raw: ready))
    }

    /// Hands the backend to the pool when the session ends at rest (no statement outstanding, no
    /// transaction open, no cancel of the gateway's own still on its way to it, which would hit the
    /// next session's statement); nil when it must be closed instead.
    func releaseBackend() -> PooledBackend? {
        guard let settings = target?.pool, let backend, let startup = backendStartup, startup.processID != 0, opened,
            tracker.isIdle, tracker.transactionStatus == .idle, !inputPaused, queued.isEmpty, pausedFrames == nil, !abortedBlock
        else { return nil }
        self.backend = nil
        return PooledBackend(channel: backend, relay: relay, startup: startup, pools: gateway.pools, settings: settings, logger: gateway.logger)
    }
}
