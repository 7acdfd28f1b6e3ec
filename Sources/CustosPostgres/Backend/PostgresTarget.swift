import CustosCore
import NIOCore
import NIOSSL

/// A PostgreSQL connection target with the gateway-held credential.
public struct PostgresTarget: Sendable {
    /// TLS towards the backend.
    public enum TLSMode: Sendable {
        case disable
        /// Encrypt, without checking the certificate.
        case require
        /// Encrypt and check the certificate chain against the CA and the host name.
        case verifyFull(caFile: String)
    }

    /// How the Gate sees this target.
    public var connection: ConnectionTarget
    public var host: String
    public var port: Int
    public var database: String
    public var user: String
    /// The secret; never logged, never recorded.
    public var password: String
    public var tls: TLSMode
    /// Built once from `tls`; nil when TLS is off.
    public var tlsContext: NIOSSLContext?
    /// Keep released backend connections for the next session; nil closes each with its session.
    public var pool: PoolSettings?

    /// The backend pool of a target (see ``BackendPools``).
    public struct PoolSettings: Sendable {
        /// Idle connections kept for this target at most, over all event loops.
        public var size: Int
        /// An idle connection unused this long is closed.
        public var idleTimeout: TimeAmount

        public init(size: Int, idleTimeout: TimeAmount) {
            self.size = size
            self.idleTimeout = idleTimeout
        }
    }

    public init(
        connection: ConnectionTarget, host: String, port: Int, database: String, user: String, password: String, tls: TLSMode,
        pool: PoolSettings? = nil
    ) throws {
        self.connection = connection
        self.pool = pool
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.tls = tls
        switch tls {
        case .disable:
            self.tlsContext = nil
        case .require:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            self.tlsContext = try NIOSSLContext(configuration: configuration)
        case .verifyFull(let caFile):
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .fullVerification
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            self.tlsContext = try NIOSSLContext(configuration: configuration)
        }
    }
}
