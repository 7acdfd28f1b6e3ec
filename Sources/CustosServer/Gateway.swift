import AsyncHTTPClient
import CustosAdmin
import CustosCore
import CustosPostgres
import CustosSQL
import CustosStore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The running gateway's parts, built from a configuration. `custos serve` runs it; tests build
/// the same graph on port 0.
public final class Gateway: Service {
    public let config: CustosConfig
    public let store: EventStore
    public let writer: EventWriter
    let postgres: PostgresGateway
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    /// The Gate every session consults; its policy is replaced on SIGHUP.
    public let gate: Gate
    /// Statements held for a person's decision, and their passes.
    public let approvals: ApprovalBook
    /// Where the configuration was read from (SIGHUP re-reads its policy); nil when built in memory.
    let configPath: String?
    let verifier: TokenVerifier
    /// Signs the chain head (checkpoints).
    public let signer: CheckpointSigner

    /// Builds every part; fails with a ``ConfigError`` naming the key when a secret or file is unusable.
    public init(config: CustosConfig, configPath: String? = nil, logger: Logger) throws {
        self.config = config
        self.configPath = configPath
        self.logger = logger
        var targets: [String: PostgresTarget] = [:]
        for connection in config.connections {
            let password = try config.password(of: connection)
            targets[connection.name] = try connection.target(password: password)
        }
        var listenerTLS: NIOSSLContext?
        if let certificate = config.listen.tlsCertificate, let key = config.listen.tlsKey {
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
                let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                listenerTLS = try NIOSSLContext(configuration: configuration)
            } catch {
                throw ConfigError(key: "listen.tls", problem: "cannot load certificate or key: \(error)")
            }
        }
        // Keys before the store: nothing may fail once the writer thread runs.
        let digest = try KeyFile.load(path: config.keys.digestFile, key: "keys.digest_file")
        let masking = try KeyFile.load(path: config.keys.maskingFile, key: "keys.masking_file")
        let signing = try KeyFile.load(path: config.keys.signingFile, key: "keys.signing_file")
        for (created, path, use) in [(digest.created, config.keys.digestFile, "result digests"), (masking.created, config.keys.maskingFile, "masking hashes")]
        where created {
            logger.warning("created a new key", metadata: ["path": "\(path)", "use": "\(use)"])
        }
        let signer: CheckpointSigner
        do {
            signer = try CheckpointSigner(seed: signing.key.withUnsafeBytes { Array($0) })
        } catch {
            throw ConfigError(key: "keys.signing_file", problem: "not an Ed25519 seed: \(error)")
        }
        self.signer = signer
        if signing.created {
            // Auditors pin this key: it should be copied somewhere this host cannot write.
            logger.warning("created a new signing key", metadata: ["path": "\(config.keys.signingFile)", "public_key": "\(signer.publicKey)"])
            FileHandle.standardError.write(
                Data("custos: WARNING: created signing key \(config.keys.signingFile) (mode 0600); public key \(signer.publicKey) — keep a copy of it off this host\n".utf8))
        }
        do {
            try FileManager.default.createDirectory(
                atPath: URL(fileURLWithPath: config.recording.store).deletingLastPathComponent().path, withIntermediateDirectories: true)
            self.store = try EventStore(path: config.recording.store)
        } catch {
            throw ConfigError(key: "recording.store", problem: "cannot open the store: \(error)")
        }
        let resume: EventStore.Resume
        let writerID: String
        let anchorPath = config.keys.signingFile + ".head"
        do {
            writerID = try store.writerID(preferred: config.recording.writerID)
            // What a crash left in the write-ahead journal, before the chain is checked.
            try EventWriter.recoverJournal(store: store, logger: logger)
            let anchor = ChainAnchor.read(path: anchorPath, writerID: writerID, publicKey: signer.publicKey)
            switch try store.resumeCheck(writerID: writerID, trustedKey: signer.publicKey, anchor: anchor, retention: config.recording.retention) {
            case .success(let found): resume = found
            case .failure(let problem):
                throw ConfigError(
                    key: "recording.store",
                    problem: "the chain of writer \(writerID) does not verify (\(problem.kind.rawValue) at seq \(problem.seq): \(problem.detail)); "
                        + "refusing to extend and sign it. Keep the store as evidence, run custos verify, and start on a new store")
            }
            try store.savePolicy(config.policy ?? .denyAll)
            // What a crash left unindexed becomes searchable before anything new arrives.
            try store.indexAllStatements()
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(key: "recording.store", problem: "cannot read the store: \(error)")
        }
        do {
            let logger = self.logger
            self.writer = try EventWriter(
                store: store, writerID: writerID, queueLimit: config.recording.queueLimit, signer: signer,
                checkpointEvery: config.recording.checkpointEvery,
                onCheckpoint: { checkpoint in
                    // Logged too: a log shipped off the host is an anchor nobody here can rewrite.
                    logger.info("checkpoint", metadata: ["writer": "\(checkpoint.writerID)", "seq": "\(checkpoint.seq)", "hash": "\(checkpoint.hash)"])
                    do {
                        try ChainAnchor.write(checkpoint, path: anchorPath)
                    } catch {
                        logger.error("checkpoint anchor not written", metadata: ["path": "\(anchorPath)", "error": "\(error)"])
                    }
                }, logger: logger)
        } catch {
            throw ConfigError(key: "recording.store", problem: "cannot open the store: \(error)")
        }
        if let unsigned = resume.unsigned {
            // Said in the record before anything signs them: these were not signed as they were written.
            logger.warning("events left unsigned by a crash are signed now", metadata: ["from": "\(unsigned.lowerBound)", "through": "\(unsigned.upperBound)"])
            writer.appendLater(
                EventDraft(
                    kind: .writerRecovered, sessionID: "gateway",
                    payload: ["unsigned_from": .int(unsigned.lowerBound), "unsigned_through": .int(unsigned.upperBound), "signed_through": .int(resume.signedThrough)]))
        }
        let verifier = TokenVerifier(
            issuers: config.identity.issuers, source: HTTPJWKSSource(client: .shared), skew: config.identity.clockSkew,
            refetchInterval: config.identity.jwksRefreshMinInterval)
        let settings = PostgresGateway.Settings(
            host: config.listen.host, port: config.listen.port, tls: listenerTLS, allowCleartextOnLoopback: config.listen.allowCleartextOnLoopback,
            maxMessageSize: config.listen.maxMessageSize, startupTimeout: .milliseconds(Int64(config.listen.startupTimeout * 1000)),
            endSessionOnExpiry: config.identity.endSessionOnExpiry, clockSkew: .milliseconds(Int64(config.identity.clockSkew * 1000)),
            recordingMode: config.recording.mode, digestKey: digest.key, maskingKey: masking.key, sampleRows: config.recording.sampleRows)
        self.gate = Gate(policy: config.policy ?? .denyAll, analyzer: PostgresAnalyzer())
        let notifier = WebhookNotifier(urls: config.approvals.webhooks, logger: logger)
        let loaded: [Approval]
        do {
            // Pending approvals (and unused passes) outlive a restart.
            loaded = try store.approvals(status: [.pending, .approved])
        } catch {
            throw ConfigError(key: "recording.store", problem: "cannot read approvals: \(error)")
        }
        self.approvals = ApprovalBook(recorder: writer, loaded: loaded, notify: { notifier.notify($0) })
        self.postgres = PostgresGateway(
            settings: settings, targets: targets, gate: gate, verifier: verifier, recorder: writer, approvals: approvals, logger: logger)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        self.verifier = verifier
    }

    /// The admin API, when configured: approvals over HTTP, with the same token checks.
    private func adminApplication() -> (any Service)? {
        guard let admin = config.admin else { return nil }
        var roles: [AdminRole: [String]] = [:]
        for (name, groups) in admin.roles { if let role = AdminRole(rawValue: name) { roles[role] = groups } }
        let settings = AdminSettings(host: admin.host, port: admin.port, roles: roles)
        let evidence = EvidenceKey(publicKey: signer.publicKey, writerID: writer.writerID)
        return AdminAPI.application(settings: settings, verifier: verifier, approvals: approvals, audit: store, evidence: evidence, logger: logger) { port in
            FileHandle.standardError.write(Data("custos: admin API listening on \(admin.host):\(port)\n".utf8))
        }
    }

    /// Re-reads the policy on SIGHUP. Sessions keep running; a policy that fails validation is
    /// refused and logged, and the one in force stays.
    private func installReloadHandler() -> (any DispatchSourceSignal)? {
        guard let configPath else { return nil }
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        let gate = self.gate
        let logger = self.logger
        let store = self.store
        source.setEventHandler {
            do {
                let policy = try CustosConfig.load(path: configPath).policy ?? .denyAll
                // Kept before it decides anything, so that a bundle can always carry it.
                try store.savePolicy(policy)
                gate.reload(policy)
                logger.notice("policy reloaded", metadata: ["policy": "\(policy.version)", "rules": "\(policy.rules.count)"])
                FileHandle.standardError.write(Data("custos: policy reloaded (\(policy.version))\n".utf8))
            } catch {
                logger.error("policy reload refused; the previous policy stays in force", metadata: ["error": "\(error)"])
                FileHandle.standardError.write(Data("custos: policy reload refused: \(error)\n".utf8))
            }
        }
        source.resume()
        return source
    }

    /// Removes payloads older than `age`: first a `retention` event says which (committed, so
    /// that verification accepts the removal), then the payloads go (docs/evidence.md).
    func applyRetention(age: TimeInterval) async {
        let before = Timestamp.format(Date().addingTimeInterval(-age))
        do {
            guard let head = try store.seqBounds(writerID: writer.writerID)?.upperBound,
                try store.hasPayloads(writerID: writer.writerID, before: before, throughSeq: head)
            else { return }
            let draft = EventDraft(
                kind: .retention, sessionID: "gateway", payload: ["before": .string(before), "through_seq": .int(head)])
            let writer = self.writer
            let recorded: Result<Void, RecorderError> = await withCheckedContinuation { continuation in
                writer.append(draft) { continuation.resume(returning: $0) }
            }
            // The store must hold the event before any payload goes: verification reads it there.
            guard case .success = recorded, writer.waitUntilLoaded() else {
                return logger.error("retention skipped: its event could not be recorded")
            }
            let removed = try store.prune(writerID: writer.writerID, before: before, throughSeq: head)
            logger.notice("retention applied", metadata: ["before": "\(before)", "through_seq": "\(head)", "payloads_removed": "\(removed)"])
        } catch {
            logger.error("retention failed", metadata: ["error": "\(error)"])
        }
    }

    /// Binds the listener, serves until graceful shutdown, then closes the listener and commits
    /// what is still queued.
    public func run() async throws {
        let listener = try await PostgresListener.bind(gateway: postgres, group: group)
        let address = listener.localAddress
        FileHandle.standardError.write(Data("custos: listening on \(address?.ipAddress ?? config.listen.host):\(address?.port ?? config.listen.port)\n".utf8))
        logger.info(
            "listening", metadata: ["address": "\(address.map { "\($0)" } ?? "?")", "writer": "\(writer.writerID)", "policy": "\(gate.policy.version)"])
        let reload = installReloadHandler()
        defer { reload?.cancel() }
        // The admin API runs beside the listener and stops with it.
        let adminTask = adminApplication().map { app in
            Task {
                do {
                    try await app.run()
                } catch {
                    self.logger.error("admin API stopped", metadata: ["error": "\(error)"])
                }
            }
        }
        defer { adminTask?.cancel() }
        // Approvals past their TTL expire (recorded) even when nobody asks about them.
        let approvals = self.approvals
        let sweeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(2))
                approvals.sweep()
            }
        }
        defer { sweeper.cancel() }
        // Checkpoints also on a clock, so that a quiet gateway's last events get signed.
        let writer = self.writer
        let interval = config.recording.checkpointInterval
        let checkpoints = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
                writer.requestCheckpoint()
            }
        }
        defer { checkpoints.cancel() }
        // The search index follows the record within a quarter of a second, in batches between commits.
        let indexing = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                writer.requestIndexing()
            }
        }
        defer { indexing.cancel() }
        let retention = config.recording.retention.map { age in
            Task {
                while !Task.isCancelled {
                    await self.applyRetention(age: age)
                    try? await Task.sleep(for: .seconds(3600))
                }
            }
        }
        defer { retention?.cancel() }
        await withGracefulShutdownHandler {
            try? await listener.closeFuture.get()
        } onGracefulShutdown: {
            listener.close(promise: nil)
        }
        // Sessions end with a FATAL and a recorded close before the writer stops.
        await postgres.shutdownSessions()
        try? await group.shutdownGracefully()
        writer.stop()
        do {
            try store.close()
        } catch {
            logger.warning("store not closed cleanly", metadata: ["error": "\(error)"])
        }
        logger.info("stopped")
    }
}
