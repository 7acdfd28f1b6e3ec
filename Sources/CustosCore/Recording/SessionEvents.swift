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

    /// The session was admitted and its backend is ready.
    public func open(client: Client, identity: Identity, connection: ConnectionTarget, decision: Decision, at: Date = Date()) -> EventDraft {
        let summary = SessionSummary(
            id: sessionID, connection: connection.name, database: client.database, startupUser: client.startupUser,
            subject: identity.subject, email: identity.email, issuer: identity.issuer, groups: identity.groups,
            clientAddress: client.address, applicationName: client.applicationName, startedAt: Timestamp.format(at), outcome: "open")
        let payload: CanonicalJSON = [
            "client": Self.client(client),
            "connection": .string(connection.name),
            "identity": Self.identity(identity),
            "decision": Self.decision(decision),
        ]
        return EventDraft(kind: .sessionOpen, sessionID: sessionID, at: at, payload: payload, index: .open(summary))
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

    /// A statement about to be forwarded (write-ahead: committed before it runs).
    public func statement(number: Int, action: Action, decision: Decision, at: Date = Date()) -> EventDraft {
        let payload: CanonicalJSON = [
            "statement": .int(Int64(number)),
            "protocol": .string(action.channel.rawValue),
            "text": .string(action.text),
            "parameters": .array(action.parameters.map(CanonicalJSON.optional)),
            "decision": Self.decision(decision),
        ]
        return EventDraft(kind: .statement, sessionID: sessionID, at: at, payload: payload)
    }

    /// How a statement ended.
    public struct Outcome: Sendable, Equatable {
        public var commandTag: String?
        public var rows: Int?
        public var errorCode: String?
        public var errorMessage: String?
        public var durationMicros: Int64

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
        var error: CanonicalJSON = .null
        if let code = outcome.errorCode {
            error = ["sqlstate": .string(code), "message": .optional(outcome.errorMessage)]
        }
        let payload: CanonicalJSON = [
            "statement": .int(Int64(number)),
            "command_tag": .optional(outcome.commandTag),
            "rows": .optional(outcome.rows),
            "duration_us": .int(outcome.durationMicros),
            "error": error,
        ]
        return EventDraft(kind: .result, sessionID: sessionID, at: at, payload: payload)
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

    static func decision(_ decision: Decision) -> CanonicalJSON {
        [
            "verdict": .string(decision.verdict.rawValue),
            "rule": .optional(decision.rule),
            "policy": .optional(decision.policy),
            "message": .optional(decision.message),
        ]
    }
}
