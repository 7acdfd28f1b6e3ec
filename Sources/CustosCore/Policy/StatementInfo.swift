/// What one SQL statement is, as the parser sees it. Produced by CustosSQL (libpg_query); the
/// policy decides on it and never on the text itself.
public struct StatementInfo: Sendable, Equatable, Hashable {
    /// Properties found anywhere in the statement's tree (CTEs, subqueries, EXPLAIN ANALYZE,
    /// PREPARE … AS, CREATE TABLE … AS, SELECT … INTO).
    public enum Flag: String, Sendable, Hashable, CaseIterable, Codable {
        /// DROP, TRUNCATE, ALTER … DROP, DELETE or UPDATE without WHERE.
        case destructive
        /// GRANT/REVOKE, roles, SET ROLE / SESSION AUTHORIZATION, ALTER SYSTEM, CREATE EXTENSION,
        /// COPY to/from a program or a server file, administrative or file-reading functions.
        case privileged
        /// Its effect cannot be seen by the parser (DO blocks, EXECUTE of an unknown prepared statement, …).
        case opaque
        /// The parser rejected it.
        case unparseable
        /// It would change how PostgreSQL reads the statements after it (`standard_conforming_strings`
        /// off, a `client_encoding` other than UTF8): Custos could no longer read them as the
        /// backend does, so the gate refuses it whatever the policy says.
        case lexing
    }

    /// The statement kind: the parse node's name in snake case without `Stmt` (`select`, `insert`,
    /// `update`, `delete`, `merge`, `copy`, `create_table`, `create_table_as`, `drop`, `truncate`,
    /// `alter_table`, `grant`, `do`, `prepare`, `execute`, `explain`, `show`, …); transaction
    /// control is `begin`, `commit`, `rollback`, `savepoint`, `release`, `rollback_to`,
    /// `prepare_transaction`, `commit_prepared`, `rollback_prepared`; `set` and `reset` for
    /// VariableSetStmt; `unknown` when unparseable.
    public var kind: String
    /// Tables read, as written in the statement (`schema.table` when qualified), lowercased unless quoted.
    public var tablesRead: [String]
    /// Tables written (inserted, updated, deleted, merged, truncated, copied into, created, altered, dropped).
    public var tablesWritten: [String]
    /// Functions called, lowercased, qualified when written qualified.
    public var functions: [String]
    public var flags: Set<Flag>
    /// True when the statement only reads: no table written, no DDL, nothing privileged or opaque.
    public var readOnly: Bool
    /// This statement's own text (one part of a multi-statement string).
    public var text: String
    /// The text with literals replaced by `$n` placeholders (pg_query_normalize).
    public var normalized: String
    /// libpg_query's fingerprint (hex), equal for statements that differ only in literals.
    public var fingerprint: String
    /// For SQL-level `PREPARE`, `EXECUTE` and `DEALLOCATE`: the prepared statement's name (nil for
    /// `DEALLOCATE ALL`), so a session can tell what an `EXECUTE` runs.
    public var preparedName: String?
    /// For `PREPARE`: the kind of the statement it prepares.
    public var preparedKind: String?

    public init(
        kind: String, tablesRead: [String] = [], tablesWritten: [String] = [], functions: [String] = [], flags: Set<Flag> = [],
        readOnly: Bool, text: String, normalized: String = "", fingerprint: String = "", preparedName: String? = nil, preparedKind: String? = nil
    ) {
        self.preparedName = preparedName
        self.preparedKind = preparedKind
        self.kind = kind
        self.tablesRead = tablesRead
        self.tablesWritten = tablesWritten
        self.functions = functions
        self.flags = flags
        self.readOnly = readOnly
        self.text = text
        self.normalized = normalized
        self.fingerprint = fingerprint
    }
}

/// Turns statement text into ``StatementInfo``s. The core depends on this protocol only;
/// CustosSQL implements it over the real PostgreSQL parser.
public protocol StatementAnalyzer: Sendable {
    /// The statements in `sql` (one per part of a multi-statement string; one `unparseable`
    /// statement when the parser rejects the text).
    func analyze(_ sql: String) -> [StatementInfo]
    /// The literals and `$n` parameters of `sql` that are compared with or assigned to a column,
    /// and its passwords. Parses afresh (never cached: positions differ between texts), so callers
    /// ask only for statements that touch a masked column or set a password.
    func literalUses(_ sql: String) -> [LiteralUse]
    /// For a `COPY` statement: what it copies and in which format; nil for anything else.
    func copyInfo(_ sql: String) -> CopyInfo?
}

extension StatementAnalyzer {
    public func literalUses(_ sql: String) -> [LiteralUse] { [] }
    public func copyInfo(_ sql: String) -> CopyInfo? { nil }
}
