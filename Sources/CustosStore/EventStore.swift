import CustosCore
import Foundation
import GRDB

/// The SQLite event store (GRDB, WAL, `synchronous=NORMAL`): one file holding the hash-chained
/// events and the searchable index of sessions.
public final class EventStore: Sendable {
    /// The database; a pool so that readers never wait for the writer.
    let database: DatabasePool
    /// Path of the SQLite file.
    public let path: String

    /// Opens (creating and migrating if needed) the store at `path`.
    public init(path: String, readOnly: Bool = false) throws {
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(5)
        configuration.label = "custos.store"
        if !readOnly {
            configuration.prepareDatabase { db in
                // NORMAL in WAL mode: a commit survives the process being killed; only power loss
                // can drop the last transactions, which the spec puts out of scope.
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
            }
        }
        self.path = path
        self.database = try DatabasePool(path: path, configuration: configuration)
        if !readOnly {
            try Self.migrator.migrate(database)
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                    CREATE TABLE events (
                        writer_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        at TEXT NOT NULL,
                        session_id TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        payload TEXT,
                        payload_hash TEXT NOT NULL,
                        prev_hash TEXT NOT NULL,
                        hash TEXT NOT NULL,
                        PRIMARY KEY (writer_id, seq)
                    ) WITHOUT ROWID;
                    CREATE INDEX events_session ON events (session_id, writer_id, seq);
                    CREATE TABLE sessions (
                        id TEXT PRIMARY KEY NOT NULL,
                        connection TEXT,
                        database TEXT NOT NULL,
                        startup_user TEXT NOT NULL,
                        subject TEXT,
                        email TEXT,
                        issuer TEXT,
                        groups TEXT NOT NULL,
                        client_address TEXT NOT NULL,
                        application_name TEXT,
                        started_at TEXT NOT NULL,
                        ended_at TEXT,
                        outcome TEXT NOT NULL,
                        reason TEXT,
                        sqlstate TEXT
                    );
                    CREATE INDEX sessions_started ON sessions (started_at);
                    CREATE INDEX sessions_subject ON sessions (subject);
                    CREATE INDEX sessions_email ON sessions (email);
                    """)
        }
        migrator.registerMigration("v2-approvals") { db in
            // The latest state of each approval, written with the event that changed it.
            try db.execute(
                sql: """
                    CREATE TABLE approvals (
                        id TEXT PRIMARY KEY NOT NULL,
                        status TEXT NOT NULL,
                        created_at TEXT NOT NULL,
                        body TEXT NOT NULL
                    );
                    CREATE INDEX approvals_status ON approvals (status, created_at);
                    """)
        }
        migrator.registerMigration("v3-evidence") { db in
            // Signed chain heads; the policies decisions name; and the search index over statement
            // events, filled in batches off the hot path (``indexStatements(limit:)``): a full-text
            // insert in every statement's own commit cost more than the commit itself.
            try db.execute(
                sql: """
                    CREATE TABLE checkpoints (
                        writer_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        hash TEXT NOT NULL,
                        at TEXT NOT NULL,
                        public_key TEXT NOT NULL,
                        signature TEXT NOT NULL,
                        PRIMARY KEY (writer_id, seq)
                    ) WITHOUT ROWID;
                    CREATE TABLE policies (version TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL, first_seen TEXT NOT NULL);
                    CREATE TABLE statement_index (
                        id INTEGER PRIMARY KEY,
                        writer_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        session_id TEXT NOT NULL,
                        verdict TEXT,
                        UNIQUE (writer_id, seq)
                    );
                    CREATE INDEX statement_index_verdict ON statement_index (verdict, session_id);
                    CREATE TABLE statement_tables (session_id TEXT NOT NULL, name TEXT NOT NULL);
                    CREATE INDEX statement_tables_name ON statement_tables (name, session_id);
                    CREATE VIRTUAL TABLE statement_text USING fts5(text, session_id UNINDEXED);
                    CREATE TABLE index_progress (writer_id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL);
                    DROP TRIGGER IF EXISTS events_index_statement;
                    """)
        }
        return migrator
    }

    /// Approvals in the given states (all when empty), newest first.
    public func approvals(status: [Approval.Status] = []) throws -> [Approval] {
        try database.read { db in
            let rows: [String]
            if status.isEmpty {
                rows = try String.fetchAll(db, sql: "SELECT body FROM approvals ORDER BY created_at DESC")
            } else {
                let marks = status.map { _ in "?" }.joined(separator: ",")
                rows = try String.fetchAll(
                    db, sql: "SELECT body FROM approvals WHERE status IN (\(marks)) ORDER BY created_at DESC", arguments: StatementArguments(status.map(\.rawValue)))
            }
            return try rows.map { try JSONDecoder().decode(Approval.self, from: Data($0.utf8)) }
        }
    }

    /// Checkpoints the WAL into the database file and closes it (at shutdown, after the writer).
    public func close() throws {
        // An explicit checkpoint: the main file alone then holds every event (a copy of just the
        // .sqlite file is complete), whatever other connections are still open.
        try database.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
        try database.close()
    }

    /// This store's writer id, created on first use and kept, so that one gateway keeps one chain
    /// across restarts.
    public func writerID(preferred: String?) throws -> String {
        try database.write { db in
            if let preferred {
                try db.execute(sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('writer_id', ?)", arguments: [preferred])
                return preferred
            }
            if let existing = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'writer_id'") {
                return existing
            }
            let created = "gw-" + UUID().uuidString.lowercased().prefix(8)
            try db.execute(sql: "INSERT INTO meta (key, value) VALUES ('writer_id', ?)", arguments: [created])
            return String(created)
        }
    }

    /// The last event of a writer's chain, if any.
    func head(writerID: String) throws -> (seq: Int64, hash: String)? {
        try database.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT seq, hash FROM events WHERE writer_id = ? ORDER BY seq DESC LIMIT 1", arguments: [writerID]) else {
                return nil
            }
            return (row["seq"], row["hash"])
        }
    }

    /// Inserts sealed events and their index updates, and the checkpoints signing heads among
    /// them, in one transaction.
    func insert(_ batch: [(Event, SessionIndexUpdate?, Approval?)], checkpoints: [Checkpoint] = []) throws {
        try database.write { db in
            for checkpoint in checkpoints { try Self.insert(checkpoint, db) }
            let insertEvent = try db.cachedStatement(
                sql: "INSERT INTO events (writer_id, seq, at, session_id, kind, payload, payload_hash, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)")
            for (event, index, approval) in batch {
                if let approval {
                    let body = String(decoding: try JSONEncoder().encode(approval), as: UTF8.self)
                    try db.cachedStatement(sql: "INSERT OR REPLACE INTO approvals (id, status, created_at, body) VALUES (?,?,?,?)")
                        .execute(arguments: [approval.id, approval.status.rawValue, approval.createdAt, body])
                }
                try insertEvent.execute(arguments: [
                    event.writerID, event.seq, event.at, event.sessionID, event.kind, event.payload, event.payloadHash, event.prevHash, event.hash,
                ])
                switch index {
                case .open(let summary)?:
                    let groups = CanonicalJSON.array(summary.groups.map(CanonicalJSON.string)).text
                    try db.cachedStatement(
                        sql: """
                            INSERT OR REPLACE INTO sessions (id, connection, database, startup_user, subject, email, issuer, groups,
                                client_address, application_name, started_at, ended_at, outcome, reason, sqlstate)
                            VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                            """
                    ).execute(arguments: [
                        summary.id, summary.connection, summary.database, summary.startupUser, summary.subject, summary.email, summary.issuer,
                        groups, summary.clientAddress, summary.applicationName, summary.startedAt, summary.endedAt, summary.outcome,
                        summary.reason, summary.sqlstate,
                    ])
                case .close(let endedAt, let outcome, let reason, let sqlstate)?:
                    try db.cachedStatement(sql: "UPDATE sessions SET ended_at = ?, outcome = ?, reason = ?, sqlstate = ? WHERE id = ?")
                        .execute(arguments: [endedAt, outcome, reason, sqlstate, event.sessionID])
                case nil:
                    break
                }
            }
        }
    }
}
