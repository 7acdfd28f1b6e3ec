import Crypto
import CustosCore
import CustosPostgres
import CustosSQL
import CustosStore
import Foundation
import AsyncHTTPClient
import Logging
import NIOPosix

/// `custos replay`: runs a recorded session's statements again on a connection and compares
/// what they return with the digests recorded at the time (docs/evidence.md, "Replay").
public enum Replay {
    /// How a replayed statement compares with its record.
    public enum Verdict: String, Sendable {
        case same
        case reordered = "same rows, other order"
        case different
        case notReplayable = "not replayable"
        case notRun = "not run"
        case skipped = "skipped (write)"
    }

    /// One recorded statement and what its replay gave.
    public struct Line: Sendable {
        public var number: Int
        public var text: String
        public var recorded: (ordered: String, multiset: String)?
        public var recordedRows: Int?
        public var recordedError: String?
        public var replayed: ReplayOutcome?
        public var verdict: Verdict
        /// Why it was not replayed, or what differs.
        public var note: String?
    }

    /// A replay that cannot start (bad connection, writes not allowed there, no such session).
    public struct ReplayError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// Statements that only steer the session; replayed even when writes are not allowed (the
    /// session refuses writes anyway) unless they could lift that refusal (``liftsReadOnly``).
    static let sessionControl: Set<String> = [
        "begin", "start_transaction", "commit", "rollback", "savepoint", "release", "rollback_to", "set", "reset", "show", "deallocate", "discard",
    ]

    /// Words in a SET, RESET or BEGIN that could turn the read-only session writable or change
    /// who it acts as.
    static let liftsReadOnly = ["read_only", "read write", "characteristics", "role", "authorization", "replication"]

    /// Functions with effects a read-only transaction does not stop (or that change settings).
    static let effectful = [
        "set_config", "pg_notify", "nextval", "setval", "pg_advisory", "pg_try_advisory", "lo_", "dblink", "pg_terminate_backend",
        "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create", "pg_drop", "pg_promote", "pg_file",
    ]

    /// Replays session `id` against `connection`. Writes run only with `allowWrites` and only
    /// on a connection marked `sandbox: true`. Sample rows (the first `rows` of each result)
    /// are masked by `profile`, the viewer's.
    public static func run(
        session id: String, store: EventStore, config: CustosConfig, connection name: String, allowWrites: Bool, profile: MaskingProfile,
        rows: Int, logger: Logger
    ) async throws -> (SessionSummary, [Line]) {
        guard let connection = config.connections.first(where: { $0.name == name }) else {
            throw ReplayError("no connection \(name) in the configuration")
        }
        if allowWrites && !connection.sandbox {
            throw ReplayError("--allow-writes needs a connection marked sandbox: true; \(name) is not")
        }
        guard let (session, events) = try store.session(id: id) else { throw ReplayError("no session \(id)") }
        let digest = try KeyFile.load(path: config.keys.digestFile, key: "keys.digest_file")
        let masking = try KeyFile.load(path: config.keys.maskingFile, key: "keys.masking_file")
        let target = try connection.target(password: try config.password(of: connection))
        let replay = ReplayConnection(
            target: target, readOnly: !allowWrites, digestKey: digest.key, maskingKey: masking.key, profile: profile, sampleRows: rows,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
        defer { replay.close() }
        let analyzer = PostgresAnalyzer()
        var lines: [Line] = []
        var preparedReads: [String: Bool] = [:]
        for (statement, result) in pairs(events) {
            var line = Line(number: statement.number, text: statement.text, verdict: .notReplayable)
            line.recorded = result?.digest
            line.recordedRows = result?.rows
            line.recordedError = result?.error
            if let reason = notRun(statement, result) {
                line.verdict = .notRun
                line.note = reason
            } else if statement.textMasked {
                line.note = "a literal or parameter was masked in the record"
            } else if statement.isCopyFrom(analyzer) {
                line.note = "COPY FROM: its input was not recorded"
            } else if !allowWrites, !isRead(statement.text, analyzer: analyzer, prepared: &preparedReads) {
                line.verdict = .skipped
            } else {
                do {
                    let outcome = try await replay.run(
                        ReplayStatement(
                            text: statement.text, parameters: statement.parameters, extended: statement.extended, resultFormats: result?.formats ?? [],
                            parameterTypes: statement.parameterTypes, parameterFormats: statement.parameterFormats))
                    line.replayed = outcome
                    (line.verdict, line.note) = compare(recorded: result, replayed: outcome)
                } catch {
                    // A statement that cannot finish (a timeout, a lost connection) ends only its own replay.
                    line.note = "replay failed: \(error)"
                }
            }
            lines.append(line)
        }
        return (session, lines)
    }

    /// The masking profile for whoever holds `token` (checked like a client's), on `connection`.
    public static func viewerProfile(token: String, config: CustosConfig, connection: String) async throws -> (Identity, MaskingProfile) {
        let verifier = TokenVerifier(
            issuers: config.identity.issuers, source: HTTPJWKSSource(client: .shared), skew: config.identity.clockSkew,
            refetchInterval: config.identity.jwksRefreshMinInterval)
        let identity: Identity
        do {
            identity = try await verifier.verify(token)
        } catch {
            throw ReplayError("the token was refused: \(error)")
        }
        return (identity, (config.policy ?? .denyAll).masking.profile(for: identity, connection: connection))
    }

    static func compare(recorded: Recorded.Result?, replayed: ReplayOutcome) -> (Verdict, String?) {
        if let code = recorded?.error {
            if replayed.errorCode == code { return (.same, "the same error (\(code))") }
            return (.different, "recorded error \(code), replayed \(replayed.errorCode.map { "error \($0)" } ?? "\(replayed.rows) rows")")
        }
        // Only the SQLSTATE: PostgreSQL's message may quote values the viewer's policy masks.
        if let code = replayed.errorCode { return (.different, "replay failed with SQLSTATE \(code)") }
        guard let digest = recorded?.digest else { return (.notReplayable, "no digest was recorded") }
        if digest.ordered == replayed.ordered { return (.same, nil) }
        if digest.multiset == replayed.multiset { return (.reordered, nil) }
        return (.different, "\(recorded?.rows.map(String.init) ?? "?") rows recorded, \(replayed.rows) replayed")
    }

    /// Why a recorded statement never reached the database, if it did not.
    static func notRun(_ statement: Recorded.Statement, _ result: Recorded.Result?) -> String? {
        switch statement.verdict {
        case "allow": return nil
        case "review":
            // Held: it ran only if approved in time; a refusal at the gateway left these codes.
            if let code = result?.error, ["42501", "57014", "53400"].contains(code) { return "held and not approved (\(code))" }
            return result == nil ? "held, no result recorded" : nil
        default: return "denied by policy"
        }
    }

    /// Whether the statement only reads (or steers the session). `EXECUTE name` reads when the
    /// session's `PREPARE name` did.
    static func isRead(_ text: String, analyzer: PostgresAnalyzer, prepared: inout [String: Bool]) -> Bool {
        let infos = analyzer.analyze(text)
        guard !infos.isEmpty else { return false }
        return infos.allSatisfy { info in
            let lowered = info.text.lowercased()
            if info.functions.contains(where: { function in effectful.contains { function.lowercased().split(separator: ".").last?.hasPrefix($0) == true } }) {
                return false
            }
            if sessionControl.contains(info.kind) {
                return info.flags.isEmpty && !liftsReadOnly.contains { lowered.contains($0) }
            }
            if info.kind == "prepare", let name = info.preparedName {
                prepared[name.lowercased()] = info.readOnly
                return true
            }
            if info.kind == "execute", let name = info.preparedName { return prepared[name.lowercased()] ?? false }
            return info.readOnly || sessionControl.contains(info.kind)
        }
    }

    /// What the record says of statements and results.
    enum Recorded {
        struct Statement {
            var number: Int
            var text: String
            var parameters: [String?]
            var extended: Bool
            var textMasked: Bool
            var verdict: String
            var parameterTypes: [UInt32] = []
            var parameterFormats: [Int16] = []

            /// Whether any of its statements is a `COPY … FROM` (whose input the record lacks).
            func isCopyFrom(_ analyzer: PostgresAnalyzer) -> Bool {
                analyzer.analyze(text).contains { $0.kind == "copy" && analyzer.copyInfo($0.text)?.isFrom != false }
            }
        }

        struct Result {
            var rows: Int?
            var error: String?
            var digest: (ordered: String, multiset: String)?
            var formats: [Int16]
        }
    }

    /// Statement events with their result events, in statement order; pruned payloads skipped.
    static func pairs(_ events: [Event]) -> [(Recorded.Statement, Recorded.Result?)] {
        var statements: [Int: Recorded.Statement] = [:]
        var results: [Int: Recorded.Result] = [:]
        for event in events where event.kind == "statement" || event.kind == "result" {
            guard let payload = event.payload, let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any],
                let number = object["statement"] as? Int
            else { continue }
            if event.kind == "statement" {
                statements[number] = Recorded.Statement(
                    number: number, text: object["text"] as? String ?? "", parameters: (object["parameters"] as? [Any] ?? []).map { $0 as? String },
                    extended: object["protocol"] as? String == "extended", textMasked: object["text_masked"] as? Bool ?? false,
                    verdict: (object["decision"] as? [String: Any])?["verdict"] as? String ?? "?",
                    parameterTypes: (object["parameter_types"] as? [Int] ?? []).map { UInt32(truncatingIfNeeded: $0) },
                    parameterFormats: (object["parameter_formats"] as? [Int] ?? []).map { Int16(truncatingIfNeeded: $0) })
            } else {
                let digest = object["digest"] as? [String: Any]
                let columns = object["columns"] as? [[String: Any]] ?? []
                results[number] = Recorded.Result(
                    rows: object["rows"] as? Int, error: (object["error"] as? [String: Any])?["sqlstate"] as? String,
                    digest: (digest?["ordered"] as? String).flatMap { ordered in (digest?["multiset"] as? String).map { (ordered, $0) } },
                    formats: columns.map { Int16(truncatingIfNeeded: $0["format"] as? Int ?? 0) })
            }
        }
        return statements.keys.sorted().map { (statements[$0]!, results[$0]) }
    }
}
