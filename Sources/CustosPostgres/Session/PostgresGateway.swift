import Crypto
import CustosCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// Everything a PostgreSQL session needs from the gateway, built once by the composition root.
public final class PostgresGateway: Sendable {
    /// Listener behaviour.
    public struct Settings: Sendable {
        public var host: String
        public var port: Int
        /// When set, SSLRequest is answered with TLS.
        public var tls: NIOSSLContext?
        /// Accept a token in cleartext from a loopback client without TLS.
        public var allowCleartextOnLoopback: Bool
        /// Largest frontend message accepted.
        public var maxMessageSize: Int
        /// Time a client has to finish startup and authentication.
        public var startupTimeout: TimeAmount
        /// End the session when the token expires.
        public var endSessionOnExpiry: Bool
        /// Tolerance for clock differences with the issuer.
        public var clockSkew: TimeAmount
        /// Record before forwarding, or after.
        public var recordingMode: RecordingMode
        /// Keys the HMAC digests of raw results.
        public var digestKey: SymmetricKey
        /// Keys the `hash` masking strategy.
        public var maskingKey: SymmetricKey
        /// Masked rows kept per statement in the record.
        public var sampleRows: Int

        public init(
            host: String, port: Int, tls: NIOSSLContext?, allowCleartextOnLoopback: Bool, maxMessageSize: Int, startupTimeout: TimeAmount,
            endSessionOnExpiry: Bool, clockSkew: TimeAmount, recordingMode: RecordingMode, digestKey: SymmetricKey, maskingKey: SymmetricKey,
            sampleRows: Int = 20
        ) {
            self.digestKey = digestKey
            self.maskingKey = maskingKey
            self.sampleRows = sampleRows
            self.host = host
            self.port = port
            self.tls = tls
            self.allowCleartextOnLoopback = allowCleartextOnLoopback
            self.maxMessageSize = maxMessageSize
            self.startupTimeout = startupTimeout
            self.endSessionOnExpiry = endSessionOnExpiry
            self.clockSkew = clockSkew
            self.recordingMode = recordingMode
        }
    }

    public let settings: Settings
    public let targets: [String: PostgresTarget]
    public let gate: any GateProtocol
    public let verifier: TokenVerifier
    public let recorder: any Recorder
    public let logger: Logger
    /// Held statements and their approvals; nil when approvals are not set up (then a review rule refuses).
    public let approvals: ApprovalBook?
    let masker: Masker
    let digestKey: ResultDigest.Keyed
    let recordMasking: RecordMasking
    /// Column origins per connection target, by name.
    let catalogs: [String: Catalog]
    let cancelKeys = CancelRegistry()
    /// Idle backend connections of the targets that pool.
    let pools = BackendPools()
    let liveSessions = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<ClientSession>]>([:])

    public init(
        settings: Settings, targets: [String: PostgresTarget], gate: any GateProtocol, verifier: TokenVerifier, recorder: any Recorder,
        approvals: ApprovalBook? = nil, logger: Logger
    ) {
        self.approvals = approvals
        self.settings = settings
        self.targets = targets
        self.gate = gate
        self.verifier = verifier
        self.recorder = recorder
        self.logger = logger
        self.masker = Masker(hashKey: settings.maskingKey)
        self.digestKey = ResultDigest.Keyed(key: settings.digestKey)
        self.recordMasking = RecordMasking(masker: masker)
        self.catalogs = targets.mapValues { Catalog(target: $0, logger: logger) }
    }
}

extension PostgresGateway {
    /// Number of client connections currently open.
    public var sessionCount: Int { liveSessions.withLockedValue { $0.count } }

    /// Ends every open session with `FATAL 57P01` and records its close; waits up to `timeout`.
    public func shutdownSessions(timeout: Duration = .seconds(5)) async {
        let sessions = liveSessions.withLockedValue { Array($0.values) }
        for session in sessions {
            session.eventLoop.execute {
                session.value.terminate(sqlstate: "57P01", message: "Custos is shutting down", outcome: "closed", reason: "gateway shutdown")
            }
        }
        let deadline = ContinuousClock.now + timeout
        while sessionCount > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        pools.closeAll()
    }

    func register(_ session: ClientSession, on eventLoop: any EventLoop) {
        let bound = NIOLoopBound(session, eventLoop: eventLoop)
        liveSessions.withLockedValue { $0[ObjectIdentifier(session)] = bound }
    }

    func unregister(_ session: ClientSession) {
        _ = liveSessions.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(session)) }
    }
}

/// Maps the cancel keys Custos gives clients to the backend's, so a client can cancel its query
/// without ever learning the backend's key (or reaching a backend that is not its own).
final class CancelRegistry: Sendable {
    struct Key: Hashable {
        var processID: Int32
        var secret: Int32
    }

    struct Entry {
        var host: String
        var port: Int
        var processID: Int32
        var secret: Int32
        /// Tells the session: a statement it holds (for an approval) never reached the backend,
        /// so only the session can cancel it.
        var cancelHeld: (@Sendable () -> Void)? = nil
    }

    private let entries = NIOLockedValueBox<[Key: Entry]>([:])

    /// Registers a backend key and returns the key the client gets.
    func register(_ entry: Entry) -> Key {
        entries.withLockedValue { entries in
            var key: Key
            repeat {
                key = Key(processID: Int32.random(in: 1...Int32.max), secret: Int32.random(in: Int32.min...Int32.max))
            } while entries[key] != nil
            entries[key] = entry
            return key
        }
    }

    func lookup(_ key: Key) -> Entry? {
        entries.withLockedValue { $0[key] }
    }

    func remove(_ key: Key) {
        _ = entries.withLockedValue { $0.removeValue(forKey: key) }
    }
}
