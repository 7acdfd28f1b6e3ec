import CustosCore
import Foundation
import GRDB

/// The store's evidence side: checkpoints, policies, retention, and reading chains to verify
/// or export them (docs/evidence.md).
extension EventStore {
    static func insert(_ checkpoint: Checkpoint, _ db: Database) throws {
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO checkpoints (writer_id, seq, hash, at, public_key, signature) VALUES (?,?,?,?,?,?)")
            .execute(arguments: [checkpoint.writerID, checkpoint.seq, checkpoint.hash, checkpoint.at, checkpoint.publicKey, checkpoint.signature])
    }

    /// The writer ids of `events`, as text (whatever a tampered store holds there, so that reading
    /// never traps), found by skipping along the primary key: a `DISTINCT` reads every event, which
    /// took 180 ms at 500,000 events, and the indexer asks four times a second.
    static let eventWriters = """
        WITH RECURSIVE w(id) AS (
            SELECT (SELECT min(writer_id) FROM events)
            UNION ALL SELECT (SELECT min(writer_id) FROM events WHERE writer_id > w.id) FROM w WHERE w.id IS NOT NULL)
        SELECT CAST(id AS TEXT) FROM w WHERE id IS NOT NULL
        """

    /// Every writer with events or checkpoints in this store.
    public func writers() throws -> [String] {
        try database.read { db in
            try String.fetchAll(db, sql: "\(Self.eventWriters) UNION SELECT CAST(writer_id AS TEXT) FROM checkpoints ORDER BY 1")
        }
    }

    /// A writer's checkpoints, oldest first.
    public func checkpoints(writerID: String) throws -> [Checkpoint] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM checkpoints WHERE writer_id = ? ORDER BY seq", arguments: [writerID]).map { row in
                func text(_ column: String) -> String { String.fromDatabaseValue(row[column] as DatabaseValue) ?? "" }
                // A seq that is not a number cannot match an event: it fails as a forged signature would.
                return Checkpoint(
                    writerID: text("writer_id"), seq: Int64.fromDatabaseValue(row["seq"] as DatabaseValue) ?? 0, hash: text("hash"), at: text("at"),
                    publicKey: text("public_key"), signature: text("signature"))
            }
        }
    }

    /// The lowest and highest `seq` of a writer's events, optionally only those dated within a range.
    public func seqBounds(writerID: String, since: Date? = nil, until: Date? = nil) throws -> ClosedRange<Int64>? {
        try database.read { db in
            var clauses = ["writer_id = ?", "typeof(seq) = 'integer'"]
            var arguments: [any DatabaseValueConvertible] = [writerID]
            if let since {
                clauses.append("at >= ?")
                arguments.append(Timestamp.format(since))
            }
            if let until {
                clauses.append("at <= ?")
                arguments.append(Timestamp.format(until))
            }
            let row = try Row.fetchOne(
                db, sql: "SELECT min(seq) AS low, max(seq) AS high FROM events WHERE \(clauses.joined(separator: " AND "))",
                arguments: StatementArguments(arguments))
            guard let low: Int64 = row?["low"], let high: Int64 = row?["high"] else { return nil }
            return low...high
        }
    }

    /// The hash of one event, if present.
    public func eventHash(writerID: String, seq: Int64) throws -> String? {
        try database.read { db in
            try String.fetchOne(db, sql: "SELECT CAST(hash AS TEXT) FROM events WHERE writer_id = ? AND seq = ?", arguments: [writerID, seq])
        }
    }

    /// Calls `body` with each event of a writer in `seq` order, streaming (constant memory), and
    /// a lookup of the `seq` at which the writer's chain holds a given hash.
    public func forEachEvent(writerID: String, in range: ClosedRange<Int64>? = nil, _ body: (Event, (String) -> Int64?) throws -> Void) throws {
        try database.read { db in
            let low = range?.lowerBound ?? Int64.min
            let high = range?.upperBound ?? Int64.max
            let rows = try Row.fetchCursor(
                db, sql: "SELECT * FROM events WHERE writer_id = ? AND seq BETWEEN ? AND ? ORDER BY seq", arguments: [writerID, low, high])
            let locate = { (hash: String) -> Int64? in
                // A scan, but made at most once per check (for the first bad event).
                (try? Int64.fetchOne(
                    db, sql: "SELECT seq FROM events WHERE writer_id = ? AND hash = ? AND typeof(seq) = 'integer' LIMIT 1", arguments: [writerID, hash])) ?? nil
            }
            while let row = try rows.next() { try body(Self.event(row), locate) }
        }
    }

    /// What a writer's `retention` events promise about removed payloads.
    public func retentionMarks(writerID: String) throws -> [ChainVerifier.RetentionMark] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM events WHERE writer_id = ? AND kind = 'retention' ORDER BY seq", arguments: [writerID])
                .compactMap { ChainVerifier.RetentionMark(event: Self.event($0)) }
        }
    }

    /// Keeps a policy's canonical text, so that a bundle can carry the policies its decisions name.
    public func savePolicy(_ policy: Policy) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO policies (version, body, first_seen) VALUES (?,?,?)",
                arguments: [policy.version, policy.canonicalText, Timestamp.format(Date())])
        }
    }

    /// The canonical text of each known policy among `versions`.
    public func policies(versions: Set<String>) throws -> [(version: String, body: String)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT version, body FROM policies ORDER BY first_seen").compactMap { row in
                let version: String = row["version"]
                return versions.contains(version) ? (version, row["body"]) : nil
            }
        }
    }

    /// Indexes statement events committed since the last call (at most `limit` events per writer),
    /// for search by decision, table and text, in one transaction. Returns how many events it
    /// went through. Called by the event writer between commits, never in a statement's commit.
    @discardableResult
    public func indexStatements(limit: Int = 20_000) throws -> Int {
        try database.write { db in
            var scanned = 0
            let writers = try String.fetchAll(db, sql: Self.eventWriters)
            for writerID in writers {
                let done = try Int64.fetchOne(db, sql: "SELECT seq FROM index_progress WHERE writer_id = ?", arguments: [writerID]) ?? 0
                guard let upTo = try Int64.fetchOne(
                    db, sql: "SELECT max(seq) FROM (SELECT seq FROM events WHERE writer_id = ? AND seq > ? AND typeof(seq) = 'integer' ORDER BY seq LIMIT ?)",
                    arguments: [writerID, done, limit])
                else { continue }
                let range: StatementArguments = [writerID, done, upTo]
                // json_valid: a payload someone broke must not stop the index for good.
                let statements = "e.writer_id = ? AND e.seq > ? AND e.seq <= ? AND e.kind = 'statement' AND json_valid(e.payload)"
                try db.execute(
                    sql: """
                        INSERT OR IGNORE INTO statement_index (writer_id, seq, session_id, verdict)
                            SELECT e.writer_id, e.seq, e.session_id, json_extract(e.payload, '$.decision.verdict') FROM events e WHERE \(statements)
                        """, arguments: range)
                try db.execute(
                    sql: """
                        INSERT INTO statement_tables (session_id, name)
                            SELECT DISTINCT e.session_id, lower(j.value) FROM events e, json_each(e.payload, '$.tables') j WHERE \(statements)
                        """, arguments: range)
                try db.execute(
                    sql: """
                        INSERT INTO statement_text (rowid, text, session_id)
                            SELECT s.id, json_extract(e.payload, '$.text'), e.session_id
                            FROM events e JOIN statement_index s ON s.writer_id = e.writer_id AND s.seq = e.seq WHERE \(statements)
                        """, arguments: range)
                try db.execute(sql: "INSERT OR REPLACE INTO index_progress (writer_id, seq) VALUES (?, ?)", arguments: [writerID, upTo])
                scanned += Int(upTo - done)
            }
            return scanned
        }
    }

    /// Indexes everything not indexed yet (at start, and when the writer stops).
    public func indexAllStatements() throws {
        while try indexStatements() > 0 {}
    }

    /// Whether any payload of `writerID` up to `throughSeq` is dated before `before`.
    public func hasPayloads(writerID: String, before: String, throughSeq: Int64) throws -> Bool {
        try database.read { db in
            try Bool.fetchOne(
                db, sql: "SELECT EXISTS (SELECT 1 FROM events WHERE writer_id = ? AND seq <= ? AND at < ? AND payload IS NOT NULL AND kind != 'retention')",
                arguments: [writerID, throughSeq, before]) ?? false
        }
    }

    /// Removes the payloads a committed `retention` event announced: events of `writerID` up to
    /// `throughSeq` dated before `before`, in batches so that the event writer is never held up
    /// for long. Also drops their statement text from the search index, and approvals decided
    /// before the cutoff. Returns how many payloads were removed.
    public func prune(writerID: String, before: String, throughSeq: Int64, batch: Int = 5000) throws -> Int {
        var removed = 0
        while true {
            let changed = try database.write { db -> Int in
                let seqs = try Int64.fetchAll(
                    db, sql: "SELECT seq FROM events WHERE writer_id = ? AND seq <= ? AND at < ? AND payload IS NOT NULL AND kind != 'retention' LIMIT ?",
                    arguments: [writerID, throughSeq, before, batch])
                guard !seqs.isEmpty else { return 0 }
                let marks = seqs.map { _ in "?" }.joined(separator: ",")
                var values: [(any DatabaseValueConvertible)?] = [writerID]
                values += seqs.map { $0 }
                let arguments = StatementArguments(values)
                try db.execute(sql: "UPDATE events SET payload = NULL WHERE writer_id = ? AND seq IN (\(marks))", arguments: arguments)
                try db.execute(
                    sql: "DELETE FROM statement_text WHERE rowid IN (SELECT id FROM statement_index WHERE writer_id = ? AND seq IN (\(marks)))",
                    arguments: arguments)
                return seqs.count
            }
            removed += changed
            if changed == 0 { break }
        }
        try database.write { db in
            // Also text whose payload went by other means, so that search never finds what the record lacks.
            try db.execute(
                sql: """
                    DELETE FROM statement_text WHERE rowid IN
                        (SELECT statement_index.id FROM statement_index JOIN events USING (writer_id, seq) WHERE events.payload IS NULL)
                    """)
            try db.execute(sql: "DELETE FROM approvals WHERE status != 'pending' AND created_at < ?", arguments: [before])
        }
        return removed
    }
}
