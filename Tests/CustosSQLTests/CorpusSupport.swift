import CustosCore

/// One corpus entry: an input string and the analysis expected for each statement in it.
struct CorpusCase: Sendable, CustomStringConvertible {
    let sql: String
    let statements: [Expected]
    let sourceLocation: String

    var description: String { sql.count > 80 ? String(sql.prefix(77)) + "…" : sql }
}

/// The expected analysis of one statement. Table and function lists compare as sets: their order
/// follows the JSON tree, not the text, and is not part of the contract.
struct Expected: Sendable {
    var kind: String
    var read: [String] = []
    var written: [String] = []
    var functions: [String] = []
    var flags: Set<StatementInfo.Flag> = []
    var readOnly: Bool
    /// The statement's own text, when the case checks it (multi-statement strings).
    var text: String? = nil
}

typealias F = StatementInfo.Flag

/// A one-statement case.
func c(
    _ sql: String, _ kind: String, r: [String] = [], w: [String] = [], f: [String] = [], flags: Set<F> = [],
    ro: Bool = false, file: String = #fileID, line: Int = #line
) -> CorpusCase {
    CorpusCase(sql: sql, statements: [Expected(kind: kind, read: r, written: w, functions: f, flags: flags, readOnly: ro)], sourceLocation: "\(file):\(line)")
}

/// A one-statement case that only reads (no flags, nothing written).
func read(_ sql: String, _ kind: String = "select", r: [String] = [], f: [String] = [], file: String = #fileID, line: Int = #line) -> CorpusCase {
    c(sql, kind, r: r, f: f, ro: true, file: file, line: line)
}

/// A multi-statement case.
func multi(_ sql: String, _ statements: [Expected], file: String = #fileID, line: Int = #line) -> CorpusCase {
    CorpusCase(sql: sql, statements: statements, sourceLocation: "\(file):\(line)")
}

/// One statement of a multi-statement case.
func s(
    _ kind: String, r: [String] = [], w: [String] = [], f: [String] = [], flags: Set<F> = [], ro: Bool = false, text: String? = nil
) -> Expected {
    Expected(kind: kind, read: r, written: w, functions: f, flags: flags, readOnly: ro, text: text)
}

/// Input the parser rejects.
func garbage(_ sql: String, file: String = #fileID, line: Int = #line) -> CorpusCase {
    c(sql, "unknown", flags: [.unparseable], file: file, line: line)
}

/// Input with no statement at all.
func empty(_ sql: String, file: String = #fileID, line: Int = #line) -> CorpusCase {
    CorpusCase(sql: sql, statements: [], sourceLocation: "\(file):\(line)")
}
