import CustosCore
import Foundation
import GRDB

/// Filters for listing sessions.
public struct SessionFilter: Sendable {
    /// Matches the subject or the email.
    public var identity: String?
    public var connection: String?
    /// Sessions started at or after.
    public var since: Date?
    /// Sessions started at or before.
    public var until: Date?
    public var limit: Int

    public init(identity: String? = nil, connection: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int = 1000) {
        self.identity = identity
        self.connection = connection
        self.since = since
        self.until = until
        self.limit = limit
    }
}

extension EventStore {
    /// Sessions matching `filter`, newest first.
    public func sessions(_ filter: SessionFilter) throws -> [SessionSummary] {
        var clauses: [String] = []
        var arguments: [(any DatabaseValueConvertible)?] = []
        if let identity = filter.identity {
            clauses.append("(subject = ? OR email = ?)")
            arguments += [identity, identity]
        }
        if let connection = filter.connection {
            clauses.append("connection = ?")
            arguments.append(connection)
        }
        if let since = filter.since {
            clauses.append("started_at >= ?")
            arguments.append(Timestamp.format(since))
        }
        if let until = filter.until {
            clauses.append("started_at <= ?")
            arguments.append(Timestamp.format(until))
        }
        let whereClause = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        arguments.append(filter.limit)
        return try database.read { db in
            try Row.fetchAll(
                db, sql: "SELECT *, \(Self.statementCount) FROM sessions \(whereClause) ORDER BY started_at DESC LIMIT ?",
                arguments: StatementArguments(arguments))
                .map(Self.summary)
        }
    }

    /// One session and its events in chain order; nil when no session has that id (or prefix).
    public func session(id: String) throws -> (SessionSummary, [Event])? {
        try database.read { db in
            let rows = try Row.fetchAll(
                db, sql: "SELECT *, \(Self.statementCount) FROM sessions WHERE id = ? OR id LIKE ? LIMIT 2", arguments: [id, id + "%"])
            guard rows.count == 1 || rows.contains(where: { ($0["id"] as String) == id }) else { return nil }
            let row = rows.first { ($0["id"] as String) == id } ?? rows[0]
            let summary = Self.summary(row)
            let events = try Row.fetchAll(
                db, sql: "SELECT * FROM events WHERE session_id = ? ORDER BY writer_id, seq", arguments: [summary.id]
            ).map(Self.event)
            return (summary, events)
        }
    }

    /// All events of one writer in sequence order (for verification).
    public func events(writerID: String) throws -> [Event] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM events WHERE writer_id = ? ORDER BY seq", arguments: [writerID]).map(Self.event)
        }
    }

    /// Counting statements at read time keeps the hot path to one insert per event.
    static let statementCount = "(SELECT count(*) FROM events WHERE events.session_id = sessions.id AND events.kind = 'statement') AS statement_count"

    static func summary(_ row: Row) -> SessionSummary {
        let groupsText: String = row["groups"]
        let groups = (try? JSONSerialization.jsonObject(with: Data(groupsText.utf8))) as? [String] ?? []
        return SessionSummary(
            id: row["id"], connection: row["connection"], database: row["database"], startupUser: row["startup_user"],
            subject: row["subject"], email: row["email"], issuer: row["issuer"], groups: groups, clientAddress: row["client_address"],
            applicationName: row["application_name"], startedAt: row["started_at"], endedAt: row["ended_at"], outcome: row["outcome"],
            reason: row["reason"], sqlstate: row["sqlstate"], statementCount: row["statement_count"])
    }

    static func event(_ row: Row) -> Event {
        Event(
            writerID: row["writer_id"], seq: row["seq"], at: row["at"], sessionID: row["session_id"], kind: row["kind"],
            payload: row["payload"] ?? "", payloadHash: row["payload_hash"], prevHash: row["prev_hash"], hash: row["hash"])
    }
}
