import CustosCore
import Foundation
import GRDB

extension EventStore: AuditLog {
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
        if let decision = filter.decision {
            clauses.append("id IN (SELECT session_id FROM statement_index WHERE verdict = ?)")
            arguments.append(decision.rawValue)
        }
        if let text = filter.text, let query = Self.fullTextQuery(text) {
            clauses.append("id IN (SELECT session_id FROM statement_text WHERE statement_text MATCH ?)")
            arguments.append(query)
        }
        if let table = filter.table {
            // `customers` also finds `public.customers`; a qualified name finds only itself.
            clauses.append(
                "id IN (SELECT session_id FROM statement_tables WHERE name = lower(?) OR (length(name) > length(?) AND substr(name, length(name) - length(?)) = '.' || lower(?)))")
            arguments += [table, table, table, table]
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
            // A prefix, with LIKE's wildcards taken literally.
            let prefix = id.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
            let rows = try Row.fetchAll(
                db, sql: "SELECT *, \(Self.statementCount) FROM sessions WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 2", arguments: [id, prefix + "%"])
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

    /// Words as an FTS5 query: each a quoted phrase (so that no word is read as FTS syntax), all
    /// required. Nil when there are no words.
    static func fullTextQuery(_ text: String) -> String? {
        let words = text.split(whereSeparator: \.isWhitespace).map { "\"" + $0.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
        return words.isEmpty ? nil : words.joined(separator: " ")
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

    /// An event row as stored. Columns of the wrong type (a tampered store) read as values that
    /// fail verification rather than stopping the process.
    static func event(_ row: Row) -> Event {
        func text(_ column: String) -> String {
            String.fromDatabaseValue(row[column] as DatabaseValue) ?? ""
        }
        let payloadValue: DatabaseValue = row["payload"]
        return Event(
            writerID: text("writer_id"), seq: Int64.fromDatabaseValue(row["seq"] as DatabaseValue) ?? 0, at: text("at"),
            sessionID: text("session_id"), kind: text("kind"),
            payload: payloadValue.isNull ? nil : (String.fromDatabaseValue(payloadValue) ?? ""), payloadHash: text("payload_hash"),
            prevHash: text("prev_hash"), hash: text("hash"))
    }
}
