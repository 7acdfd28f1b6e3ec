import CustosCore
import CustosPostgres
import Foundation
import NIOCore
import Yams

/// The gateway's configuration, read from YAML and validated before anything starts.
/// docs/configuration.md describes every key.
public struct CustosConfig: Sendable {
    /// The PostgreSQL listener.
    public struct Listen: Sendable {
        public var host: String
        public var port: Int
        public var allowCleartextOnLoopback: Bool
        public var tlsCertificate: String?
        public var tlsKey: String?
        public var maxMessageSize: Int
        public var startupTimeout: TimeInterval
    }

    /// Token validation.
    public struct IdentityConfig: Sendable {
        public var clockSkew: TimeInterval
        public var endSessionOnExpiry: Bool
        public var jwksRefreshMinInterval: TimeInterval
        public var issuers: [IssuerSettings]
    }

    /// Where a connection's password comes from (never inline).
    public enum SecretSource: Sendable, Equatable {
        case environment(String)
        case file(String)
    }

    /// One named PostgreSQL target.
    public struct Connection: Sendable {
        public var name: String
        public var host: String
        public var port: Int
        public var database: String
        public var user: String
        public var password: SecretSource
        public var sslmode: String
        public var caFile: String?
        public var allowGroups: [String]
        public var sandbox: Bool
        /// Backend connections kept for reuse (`pool.size`); 0 closes each with its session.
        public var poolSize: Int = 0
        /// An idle pooled connection is closed after this long (seconds).
        public var poolIdleTimeout: TimeInterval = 60
    }

    /// The event store.
    public struct Recording: Sendable {
        public var store: String
        public var mode: RecordingMode
        public var writerID: String?
        public var queueLimit: Int
        /// How many (masked) rows of each result a statement's record keeps.
        public var sampleRows: Int
        /// Sign the chain head after this many events ...
        public var checkpointEvery: Int = 1000
        /// ... and after this long when events arrived meanwhile (seconds).
        public var checkpointInterval: TimeInterval = 60
        /// Payloads older than this are removed (seconds); nil keeps them for ever.
        public var retention: TimeInterval?
    }

    /// The admin HTTP API: where it listens and which groups hold which role.
    public struct Admin: Sendable {
        public var host: String
        public var port: Int
        /// `approver`, `auditor`, `admin` → groups.
        public var roles: [String: [String]]
    }

    /// Held statements: who is told.
    public struct Approvals: Sendable {
        /// Webhook URLs that receive a JSON payload when an approval is requested and decided.
        public var webhooks: [String]
    }

    /// Files holding the gateway's secrets: 32 random bytes each, created (mode 0600) on first start.
    public struct Keys: Sendable {
        /// Keys the HMAC-SHA256 digests of raw results.
        public var digestFile: String
        /// Keys the `hash` masking strategy, so equal values stay joinable.
        public var maskingFile: String
        /// The Ed25519 seed that signs checkpoints.
        public var signingFile: String = ""
    }

    public var listen: Listen
    public var identity: IdentityConfig
    public var connections: [Connection]
    public var recording: Recording
    public var keys: Keys
    /// The admin HTTP API; nil when the file has no `admin` section.
    public var admin: Admin?
    public var approvals: Approvals
    public var logLevel: String
    /// The statement policy; nil when the file has no `policy` section.
    public var policy: Policy?
    /// The folder relative paths are resolved against.
    public var baseDirectory: String

    /// Loads and validates the file at `path`.
    public static func load(path: String) throws(ConfigError) -> CustosConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(key: "", problem: "cannot read \(path)")
        }
        let base = URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent().path
        return try parse(yaml: text, baseDirectory: base)
    }

    /// Parses and validates YAML text; relative paths resolve against `baseDirectory`.
    public static func parse(yaml: String, baseDirectory: String) throws(ConfigError) -> CustosConfig {
        let document: Any?
        do {
            document = try YAMLDocument.load(yaml)
        } catch {
            throw ConfigError(key: "", problem: "not valid YAML: \(error)")
        }
        var root = try ConfigReader(document, path: "")
        let resolve = { (file: String) in file.hasPrefix("/") ? file : URL(fileURLWithPath: baseDirectory).appendingPathComponent(file).path }

        var listenReader = try root.child("listen")
        var tlsReader = try listenReader.child("tls")
        let certificate = try tlsReader.optionalString("certificate").map(resolve)
        let key = try tlsReader.optionalString("key").map(resolve)
        try tlsReader.finish()
        if (certificate == nil) != (key == nil) {
            throw ConfigError(key: "listen.tls", problem: "certificate and key must be given together")
        }
        let listen = Listen(
            host: try listenReader.string("host", default: "127.0.0.1"),
            port: try listenReader.int("port", default: 6432, range: 0...65535),
            allowCleartextOnLoopback: try listenReader.bool("allow_cleartext_on_loopback", default: false),
            tlsCertificate: certificate, tlsKey: key,
            maxMessageSize: try listenReader.int("max_message_size", default: 1 << 20, range: 1024...(1 << 30)),
            startupTimeout: try listenReader.duration("startup_timeout", default: 10))
        try listenReader.finish()

        var identityReader = try root.child("identity")
        let identity = IdentityConfig(
            clockSkew: try identityReader.duration("clock_skew", default: 30),
            endSessionOnExpiry: try identityReader.bool("end_session_on_expiry", default: true),
            jwksRefreshMinInterval: try identityReader.duration("jwks_refresh_min_interval", default: 10),
            issuers: try parseIssuers(identityReader.raw("issuers")))
        if identity.clockSkew > 300 {
            throw ConfigError(key: "identity.clock_skew", problem: "at most 5m: a larger skew keeps expired tokens alive")
        }
        try identityReader.finish()

        guard let connectionMap = root.raw("connections") as? [String: Any], !connectionMap.isEmpty else {
            throw ConfigError(key: "connections", problem: "at least one connection is required")
        }
        var connections: [Connection] = []
        for name in connectionMap.keys.sorted() {
            connections.append(try parseConnection(name: name, value: connectionMap[name], resolve: resolve))
        }

        var recordingReader = try root.child("recording")
        let modeText = try recordingReader.string("mode", default: RecordingMode.writeAhead.rawValue)
        guard let mode = RecordingMode(rawValue: modeText) else {
            throw ConfigError(key: "recording.mode", problem: "expected write-ahead or async")
        }
        var recording = Recording(
            store: resolve(try recordingReader.string("store", default: "custos.sqlite")), mode: mode,
            writerID: try recordingReader.optionalString("writer_id"),
            queueLimit: try recordingReader.int("queue_limit", default: 100_000, range: 1...10_000_000),
            sampleRows: try recordingReader.int("sample_rows", default: 20, range: 0...10_000))
        recording.checkpointEvery = try recordingReader.int("checkpoint_every", default: 1000, range: 1...10_000_000)
        recording.checkpointInterval = try recordingReader.duration("checkpoint_interval", default: 60)
        guard recording.checkpointInterval >= 0.1 else {
            throw ConfigError(key: "recording.checkpoint_interval", problem: "expected at least 100ms")
        }
        if recordingReader.raw("retention") != nil {
            let retention = try recordingReader.duration("retention", default: 0)
            guard retention >= 1 else { throw ConfigError(key: "recording.retention", problem: "expected a duration of at least 1s, such as 90d") }
            recording.retention = retention
        }
        try recordingReader.finish()

        // By default the keys live beside the store.
        var keysReader = try root.child("keys")
        let storeFolder = URL(fileURLWithPath: recording.store).deletingLastPathComponent().path
        let beside = { (name: String) in URL(fileURLWithPath: storeFolder).appendingPathComponent(name).path }
        var keys = Keys(
            digestFile: try keysReader.optionalString("digest_file").map(resolve) ?? beside("custos-digest.key"),
            maskingFile: try keysReader.optionalString("masking_file").map(resolve) ?? beside("custos-masking.key"))
        keys.signingFile = try keysReader.optionalString("signing_file").map(resolve) ?? beside("custos-signing.key")
        try keysReader.finish()

        var admin: Admin?
        if root.raw("admin") != nil {
            var adminReader = try root.child("admin")
            var rolesReader = try adminReader.child("roles")
            var roles: [String: [String]] = [:]
            for role in ["approver", "auditor", "admin"] {
                if let groups = try rolesReader.stringList(role) { roles[role] = groups }
            }
            try rolesReader.finish()
            let host = try adminReader.string("host", default: "127.0.0.1")
            let allowPlainHTTP = try adminReader.bool("allow_plain_http", default: false)
            // Bearer tokens travel in the clear over plain HTTP: off loopback only when asked for
            // (behind a TLS-terminating proxy on the same network segment).
            if !isLoopback(host), !allowPlainHTTP {
                throw ConfigError(
                    key: "admin.host",
                    problem: "the admin API speaks plain HTTP: listen on loopback behind a TLS terminator, or set admin.allow_plain_http: true")
            }
            admin = Admin(host: host, port: try adminReader.int("port", default: 6480, range: 0...65535), roles: roles)
            try adminReader.finish()
        }
        var approvalsReader = try root.child("approvals")
        var webhooks: [String] = []
        for (index, url) in (try approvalsReader.stringList("webhooks") ?? []).enumerated() {
            guard let parsed = URL(string: url), let scheme = parsed.scheme, ["http", "https"].contains(scheme), parsed.host != nil else {
                throw ConfigError(key: "approvals.webhooks[\(index)]", problem: "expected an http(s) URL")
            }
            webhooks.append(url)
        }
        try approvalsReader.finish()

        var loggingReader = try root.child("logging")
        let level = try loggingReader.string("level", default: "info")
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) else {
            throw ConfigError(key: "logging.level", problem: "expected trace, debug, info, notice, warning, error or critical")
        }
        try loggingReader.finish()
        let policy = try PolicyConfig.parse(root.raw("policy"))
        try root.finish()
        return CustosConfig(
            listen: listen, identity: identity, connections: connections, recording: recording, keys: keys, admin: admin, approvals: Approvals(webhooks: webhooks), logLevel: level, policy: policy,
            baseDirectory: baseDirectory)
    }

    private static func parseIssuers(_ value: Any?) throws(ConfigError) -> [IssuerSettings] {
        guard let list = value as? [Any], !list.isEmpty else {
            throw ConfigError(key: "identity.issuers", problem: "at least one trusted issuer is required")
        }
        var issuers: [IssuerSettings] = []
        for (index, item) in list.enumerated() {
            var reader = try ConfigReader(item, path: "identity.issuers[\(index)]")
            let issuer = try reader.string("issuer")
            guard let url = URL(string: issuer), let scheme = url.scheme, let host = url.host else {
                throw ConfigError(key: reader.key("issuer"), problem: "expected an http(s) URL")
            }
            if scheme == "http" && !isLoopback(host) {
                throw ConfigError(key: reader.key("issuer"), problem: "plain http is accepted only for a loopback issuer; use https")
            }
            guard scheme == "http" || scheme == "https" else {
                throw ConfigError(key: reader.key("issuer"), problem: "expected an http(s) URL")
            }
            guard let audiences = try reader.stringList("audience"), !audiences.isEmpty else {
                throw ConfigError(key: reader.key("audience"), problem: "is required")
            }
            let algorithms = try reader.stringList("algorithms") ?? ["RS256", "ES256"]
            for alg in algorithms where !IssuerSettings.supportedAlgorithms.contains(alg) {
                throw ConfigError(key: reader.key("algorithms"), problem: "\(alg) is not allowed (only public-key algorithms: never none or HMAC)")
            }
            let groupsClaim = try reader.string("groups_claim", default: "groups")
            try reader.finish()
            issuers.append(IssuerSettings(issuer: issuer, audiences: audiences, algorithms: Set(algorithms), groupsClaim: groupsClaim))
        }
        return issuers
    }

    private static func parseConnection(name: String, value: Any?, resolve: (String) -> String) throws(ConfigError) -> Connection {
        var reader = try ConfigReader(value, path: "connections.\(name)")
        if reader.raw("password") != nil {
            throw ConfigError(key: reader.key("password"), problem: "inline passwords are not allowed; use password_env or password_file")
        }
        let env = try reader.optionalString("password_env")
        let file = try reader.optionalString("password_file")
        let password: SecretSource
        switch (env, file) {
        case (let env?, nil): password = .environment(env)
        case (nil, let file?): password = .file(resolve(file))
        default: throw ConfigError(key: reader.key("password_env"), problem: "exactly one of password_env or password_file is required")
        }
        let kind = try reader.string("kind", default: "postgres")
        guard kind == "postgres" else { throw ConfigError(key: reader.key("kind"), problem: "only postgres is supported") }
        let sslmode = try reader.string("sslmode", default: "disable")
        guard ["disable", "require", "verify-full"].contains(sslmode) else {
            throw ConfigError(key: reader.key("sslmode"), problem: "expected disable, require or verify-full")
        }
        let caFile = try reader.optionalString("ca_file").map(resolve)
        if sslmode == "verify-full" && caFile == nil {
            throw ConfigError(key: reader.key("ca_file"), problem: "is required with sslmode verify-full")
        }
        var connection = Connection(
            name: name, host: try reader.string("host"), port: try reader.int("port", default: 5432, range: 1...65535),
            database: try reader.string("database", default: name), user: try reader.string("user"), password: password,
            sslmode: sslmode, caFile: caFile, allowGroups: try reader.stringList("allow_groups") ?? [],
            sandbox: try reader.bool("sandbox", default: false))
        var pool = try reader.child("pool")
        connection.poolSize = try pool.int("size", default: 0, range: 0...10_000)
        connection.poolIdleTimeout = try pool.duration("idle_timeout", default: 60)
        guard connection.poolIdleTimeout >= 1 else { throw ConfigError(key: pool.key("idle_timeout"), problem: "must be at least 1s") }
        try pool.finish()
        try reader.finish()
        return connection
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }

    /// Reads a connection's password from its source.
    public func password(of connection: Connection) throws(ConfigError) -> String {
        switch connection.password {
        case .environment(let name):
            guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
                throw ConfigError(key: "connections.\(connection.name).password_env", problem: "environment variable \(name) is not set")
            }
            return value
        case .file(let path):
            guard let value = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigError(key: "connections.\(connection.name).password_file", problem: "cannot read \(path)")
            }
            let trimmed = value.trimmingCharacters(in: .newlines)
            guard !trimmed.isEmpty else {
                throw ConfigError(key: "connections.\(connection.name).password_file", problem: "\(path) is empty")
            }
            return trimmed
        }
    }
}

extension CustosConfig.Connection {
    /// The backend this connection names, with `password` as the gateway's credential.
    func target(password: String) throws(ConfigError) -> PostgresTarget {
        let tls: PostgresTarget.TLSMode =
            switch sslmode {
            case "require": .require
            case "verify-full": .verifyFull(caFile: caFile!)
            default: .disable
            }
        do {
            return try PostgresTarget(
                connection: ConnectionTarget(name: name, kind: "postgres", allowGroups: allowGroups, sandbox: sandbox),
                host: host, port: port, database: database, user: user, password: password, tls: tls,
                pool: poolSize > 0 ? .init(size: poolSize, idleTimeout: .milliseconds(Int64(poolIdleTimeout * 1000))) : nil)
        } catch {
            throw ConfigError(key: "connections.\(name).ca_file", problem: "cannot load the CA: \(error)")
        }
    }
}
