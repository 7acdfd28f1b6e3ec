import Foundation

/// Builds the events of one session, so adapters report facts and never shape records.
public struct SessionEvents: Sendable {
    /// The session's id (a lowercase UUID).
    public let sessionID: String

    public init(sessionID: String = UUID().uuidString.lowercased()) {
        self.sessionID = sessionID
    }

    /// Facts about a client connection known before authentication.
    public struct Client: Sendable {
        public var address: String
        public var database: String
        public var startupUser: String
        public var applicationName: String?

        public init(address: String, database: String, startupUser: String, applicationName: String?) {
            self.address = address
            self.database = database
            self.startupUser = startupUser
            self.applicationName = applicationName
        }
    }

    /// The backend connection a session runs on: the server's process id (its `pg_stat_activity.pid`,
    /// to match the server's own logs) and whether it came from the gateway's pool.
    public struct Backend: Sendable {
        public var processID: Int32
        public var reused: Bool

        public init(processID: Int32, reused: Bool) {
            self.processID = processID
            self.reused = reused
        }
    }

    /// The session was admitted and its backend is ready.
    public func open(
        client: Client, identity: Identity, connection: ConnectionTarget, decision: Decision, backend: Backend? = nil, at: Date = Date()
    ) -> EventDraft {
        let summary = SessionSummary(
            id: sessionID, connection: connection.name, database: client.database, startupUser: client.startupUser,
            subject: identity.subject, email: identity.email, issuer: identity.issuer, groups: identity.groups,
            clientAddress: client.address, applicationName: client.applicationName, startedAt: Timestamp.format(at), outcome: "open")
        // Written member by member, in canonical key order, so the decision has one definition (`write`).
        var json = CanonicalJSONWriter()
        json.beginObject()
        if let backend {
            json.key("backend")
            json.beginObject()
            json.key("pid")
            json.int(Int64(backend.processID))
            json.key("reused")
            json.bool(backend.reused)
            json.endObject()
        }
        json.key("client")
        json.value(Self.client(client))
        json.key("connection")
        json.string(connection.name)
        json.key("decision")
        Self.write(decision, into: &json)
        json.key("identity")
        json.value(Self.identity(identity))
        json.endObject()
        return EventDraft(kind: .sessionOpen, sessionID: sessionID, at: at, canonicalPayload: json.bytes, index: .open(summary))
    }

    /// A connection attempt was refused before a session existed (bad token, not allowed, …).
    public func refused(client: Client, identity: Identity?, connection: String?, sqlstate: String, reason: String, at: Date = Date()) -> EventDraft {
        let stamp = Timestamp.format(at)
        let summary = SessionSummary(
            id: sessionID, connection: connection, database: client.database, startupUser: client.startupUser,
            subject: identity?.subject, email: identity?.email, issuer: identity?.issuer, groups: identity?.groups ?? [],
            clientAddress: client.address, applicationName: client.applicationName, startedAt: stamp, endedAt: stamp,
            outcome: "refused", reason: reason, sqlstate: sqlstate)
        let payload: CanonicalJSON = [
            "client": Self.client(client),
            "connection": .optional(connection),
            "identity": identity.map(Self.identity) ?? .null,
            "sqlstate": .string(sqlstate),
            "reason": .string(reason),
        ]
        return EventDraft(kind: .sessionRefused, sessionID: sessionID, at: at, payload: payload, index: .open(summary))
    }

    /// A statement's text and parameters as recorded: masked where they touch masked data.
    public struct RecordedStatement: Sendable, Equatable {
        public var text: String
        public var parameters: [String?]
        /// True when a literal or parameter was masked: the statement cannot be replayed exactly.
        public var masked: Bool

        public init(text: String, parameters: [String?], masked: Bool) {
            self.text = text
            self.parameters = parameters
            self.masked = masked
        }
    }

    /// A statement about to be forwarded (write-ahead: committed before it runs). `recorded` is
    /// its masked form; without it the text and parameters are recorded as sent.
    public func statement(number: Int, action: Action, decision: Decision, recorded: RecordedStatement? = nil, at: Date = Date()) -> EventDraft {
        let recorded = recorded ?? RecordedStatement(text: action.text, parameters: action.parameters, masked: false)
        // Written member by member, in canonical key order (see CanonicalJSONWriter).
        var json = CanonicalJSONWriter(capacity: 256 + recorded.text.utf8.count)
        json.beginObject()
        json.key("decision")
        Self.write(decision, into: &json)
        if !action.parameters.isEmpty {
            json.key("parameter_formats")
            json.beginArray()
            for format in action.parameterFormats { json.int(format) }
            json.endArray()
            json.key("parameter_types")
            json.beginArray()
            for type in action.parameterTypes { json.int(type) }
            json.endArray()
        }
        json.key("parameters")
        json.beginArray()
        for parameter in recorded.parameters { json.string(parameter) }
        json.endArray()
        json.key("protocol")
        json.string(action.channel.rawValue)
        json.key("statement")
        json.int(Int64(number))
        // What the parser found it touches, so that sessions can be searched by table.
        json.key("tables")
        json.beginArray()
        for table in Self.tables(action.statements) { json.string(table) }
        json.endArray()
        json.key("text")
        json.string(recorded.text)
        json.key("text_masked")
        json.bool(recorded.masked)
        json.endObject()
        return EventDraft(kind: .statement, sessionID: sessionID, at: at, canonicalPayload: json.bytes)
    }

    /// The tables a statement reads or writes, each once, sorted.
    static func tables(_ statements: [StatementInfo]) -> [String] {
        // Nearly always one statement touching a table or two: no set needed.
        var tables: [String] = []
        for statement in statements {
            for table in statement.tablesRead + statement.tablesWritten where !tables.contains(table) { tables.append(table) }
        }
        return tables.sorted()
    }

    /// A result column as described by the backend.
    public struct ResultColumn: Sendable, Equatable {
        public var name: String
        public var type: Int64
        public var format: Int64

        public init(name: String, type: Int64, format: Int64) {
            self.name = name
            self.type = type
            self.format = format
        }
    }

    /// How a statement ended.
    public struct Outcome: Sendable, Equatable {
        public var commandTag: String?
        public var rows: Int?
        public var errorCode: String?
        public var errorMessage: String?
        public var durationMicros: Int64
        public var columns: [ResultColumn] = []
        /// The first rows, masked as the client received them (binary values as `\x` hex).
        public var sample: [[String?]] = []
        /// Keyed digests of the raw rows (docs/evidence.md): ordered and multiset, hex.
        public var digest: (ordered: String, multiset: String)?

        public static func == (a: Outcome, b: Outcome) -> Bool {
            a.commandTag == b.commandTag && a.rows == b.rows && a.errorCode == b.errorCode && a.errorMessage == b.errorMessage
                && a.durationMicros == b.durationMicros && a.columns == b.columns && a.sample == b.sample
                && a.digest?.ordered == b.digest?.ordered && a.digest?.multiset == b.digest?.multiset
        }

        public init(commandTag: String? = nil, rows: Int? = nil, errorCode: String? = nil, errorMessage: String? = nil, durationMicros: Int64) {
            self.commandTag = commandTag
            self.rows = rows
            self.errorCode = errorCode
            self.errorMessage = errorMessage
            self.durationMicros = durationMicros
        }
    }

    /// A statement finished (or failed).
    public func result(number: Int, outcome: Outcome, at: Date = Date()) -> EventDraft {
        // Written member by member, in canonical key order (see CanonicalJSONWriter).
        var json = CanonicalJSONWriter(capacity: 384)
        json.beginObject()
        json.key("columns")
        json.beginArray()
        for column in outcome.columns {
            json.beginObject()
            json.key("format")
            json.int(column.format)
            json.key("name")
            json.string(column.name)
            json.key("type")
            json.int(column.type)
            json.endObject()
        }
        json.endArray()
        json.key("command_tag")
        json.string(outcome.commandTag)
        json.key("digest")
        if let digest = outcome.digest { json.object("multiset", digest.multiset, "ordered", digest.ordered) } else { json.null() }
        json.key("duration_us")
        json.int(outcome.durationMicros)
        json.key("error")
        if let code = outcome.errorCode { json.object("message", outcome.errorMessage, "sqlstate", code) } else { json.null() }
        json.key("rows")
        json.int(outcome.rows)
        json.key("sample")
        json.beginArray()
        for row in outcome.sample {
            json.beginArray()
            for value in row { json.string(value) }
            json.endArray()
        }
        json.endArray()
        json.key("statement")
        json.int(Int64(number))
        json.endObject()
        return EventDraft(kind: .result, sessionID: sessionID, at: at, canonicalPayload: json.bytes)
    }

    /// The session ended; `outcome` is `closed` for a clean end, `error` otherwise.
    public func close(outcome: String, reason: String?, sqlstate: String?, statements: Int, at: Date = Date()) -> EventDraft {
        let payload: CanonicalJSON = [
            "outcome": .string(outcome),
            "reason": .optional(reason),
            "sqlstate": .optional(sqlstate),
            "statements": .int(Int64(statements)),
        ]
        return EventDraft(
            kind: .sessionClose, sessionID: sessionID, at: at, payload: payload,
            index: .close(endedAt: Timestamp.format(at), outcome: outcome, reason: reason, sqlstate: sqlstate))
    }

    static func client(_ client: Client) -> CanonicalJSON {
        [
            "address": .string(client.address),
            "database": .string(client.database),
            "startup_user": .string(client.startupUser),
            "application_name": .optional(client.applicationName),
        ]
    }

    static func identity(_ identity: Identity) -> CanonicalJSON {
        [
            "subject": .string(identity.subject),
            "email": .optional(identity.email),
            "issuer": .string(identity.issuer),
            "groups": .array(identity.groups.map(CanonicalJSON.string)),
            "token_id": .optional(identity.tokenID),
            "expires_at": .string(Timestamp.format(identity.expiresAt)),
            "actors": .array(identity.actors.map(CanonicalJSON.string)),
        ]
    }

    static func write(_ decision: Decision, into json: inout CanonicalJSONWriter) {
        json.beginObject()
        // Only a statement released by an approval names it.
        if let approval = decision.approval {
            json.key("approval")
            json.string(approval)
        }
        json.key("message")
        json.string(decision.message)
        json.key("policy")
        json.string(decision.policy)
        json.key("rule")
        json.string(decision.rule)
        json.key("verdict")
        json.string(decision.verdict.rawValue)
        json.endObject()
    }
}
