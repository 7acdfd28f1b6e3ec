import Foundation

/// Filters for finding sessions; all that are set must hold.
public struct SessionFilter: Sendable, Equatable {
    /// Matches the subject or the email.
    public var identity: String?
    public var connection: String?
    /// Sessions started at or after.
    public var since: Date?
    /// Sessions started at or before.
    public var until: Date?
    /// Sessions with at least one statement decided so.
    public var decision: Decision.Verdict?
    /// Sessions with a statement whose recorded text holds all these words (full-text).
    public var text: String?
    /// Sessions with a statement that touched this table (`name` or `schema.name`).
    public var table: String?
    public var limit: Int

    public init(
        identity: String? = nil, connection: String? = nil, since: Date? = nil, until: Date? = nil, decision: Decision.Verdict? = nil,
        text: String? = nil, table: String? = nil, limit: Int = 1000
    ) {
        self.identity = identity
        self.connection = connection
        self.since = since
        self.until = until
        self.decision = decision
        self.text = text
        self.table = table
        self.limit = limit
    }
}

/// Read access to the record for auditors: search sessions, read one, and the signing key.
public protocol AuditLog: Sendable {
    /// Sessions matching `filter`, newest first.
    func sessions(_ filter: SessionFilter) throws -> [SessionSummary]
    /// One session (by id or unique prefix) and its events in chain order.
    func session(id: String) throws -> (SessionSummary, [Event])?
}

extension SessionSummary {
    /// The summary as JSON, with the field names the CLI and the admin API print.
    public var canonical: CanonicalJSON {
        [
            "id": .string(id), "connection": .optional(connection), "database": .string(database), "startup_user": .string(startupUser),
            "subject": .optional(subject), "email": .optional(email), "issuer": .optional(issuer), "groups": .array(groups.map(CanonicalJSON.string)),
            "client_address": .string(clientAddress), "application_name": .optional(applicationName), "started_at": .string(startedAt),
            "ended_at": .optional(endedAt), "outcome": .string(outcome), "reason": .optional(reason), "sqlstate": .optional(sqlstate),
            "statement_count": .int(Int64(statementCount)),
        ]
    }
}
