import CustosCore

/// Reads a `COPY` statement's parse tree into a ``CopyInfo`` (see ``PostgresAnalyzer/copyInfo(_:)``).
enum CopyAnalysis {
    /// The COPY in `sql`, or nil when `sql` is not exactly one COPY statement (or does not parse).
    static func info(_ sql: String) -> CopyInfo? {
        let result: CopyInfo?? = sql.withCString { cString in
            PgQuery.withParseTree(cString) { json in
                guard let tape = JSONTape(json), let statements = tape.member(0, "stmts") else { return nil }
                let raw = tape.firstChild(statements)
                guard raw < tape.end(statements), tape.next(raw) == tape.end(statements), let statement = tape.member(raw, "stmt"),
                    let (type, fields) = tape.wrappedNode(statement), type == "CopyStmt"
                else { return nil }
                return info(tape, fields, sql: sql, start: tape.int(raw, "stmt_location"))
            }
        }
        return result ?? nil
    }

    private static func info(_ tape: JSONTape, _ fields: Int32, sql: String, start: Int) -> CopyInfo {
        var columns: [String] = []
        if let list = tape.member(fields, "attlist") {
            tape.forEachChild(list) { item in
                if let (type, string) = tape.wrappedNode(item), type == "String", let name = tape.string(string, "sval") { columns.append(name) }
            }
        }
        let table = tape.member(fields, "relation").flatMap { relation in
            tape.string(relation, "relname").map { name in
                [tape.string(relation, "catalogname"), tape.string(relation, "schemaname"), name].compactMap { $0 }.joined(separator: ".")
            }
        }
        // The tree holds the inner query but not where its text is: find it between the parentheses.
        let query = tape.member(fields, "query") != nil ? innerQuery(SQLLexer(sql), statementStart: start) : nil

        var format = CopyInfo.Format.text
        var delimiter: UInt8?
        var null: String?
        var quote: UInt8?
        var escape: UInt8?
        var header = false
        if let options = tape.member(fields, "options") {
            tape.forEachChild(options) { option in
                guard let (type, element) = tape.wrappedNode(option), type == "DefElem", let name = tape.string(element, "defname") else { return }
                let value = tape.member(element, "arg").flatMap { arg in tape.wrappedNode(arg).flatMap { tape.string($0.fields, "sval") } }
                switch name {
                case "format": format = value.flatMap { CopyInfo.Format(rawValue: $0.lowercased()) } ?? .text
                case "delimiter": delimiter = value?.utf8.first ?? delimiter
                case "null": null = value ?? null
                case "quote": quote = value?.utf8.first ?? quote
                case "escape": escape = value?.utf8.first ?? escape
                case "header": header = headerValue(tape, element)
                default: break
                }
            }
        }
        return CopyInfo(
            isFrom: tape.bool(fields, "is_from"), table: table, columns: columns, query: query, format: format, delimiter: delimiter,
            null: null, quote: quote ?? UInt8(ascii: "\""), escape: escape, header: header
        )
    }

    /// HEADER as PostgreSQL reads it: no argument, true/on/1 or MATCH mean a header line.
    private static func headerValue(_ tape: JSONTape, _ element: Int32) -> Bool {
        guard let arg = tape.member(element, "arg"), let (type, value) = tape.wrappedNode(arg) else { return true }
        switch type {
        case "Boolean": return tape.bool(value, "boolval")
        case "Integer": return tape.int(value, "ival") != 0
        case "String": return !["false", "off", "0", "no"].contains((tape.string(value, "sval") ?? "").lowercased())
        default: return true
        }
    }

    /// The text between `COPY (` and its matching `)`, trimmed; nil when the text is not shaped so
    /// (never expected for a statement the parser accepted with a query).
    static func innerQuery(_ lexer: SQLLexer, statementStart: Int) -> String? {
        let keyword = lexer.token(at: statementStart)
        guard keyword.kind == .identifier, lexer.text(keyword.range).lowercased() == "copy" else { return nil }
        let open = lexer.token(at: keyword.range.upperBound)
        guard open.kind == .punctuation, lexer.bytes[open.range.lowerBound] == UInt8(ascii: "(") else { return nil }
        var depth = 1
        var position = open.range.upperBound
        while true {
            let next = lexer.token(at: position)
            guard next.kind != .end else { return nil }
            if next.kind == .punctuation {
                switch lexer.bytes[next.range.lowerBound] {
                case UInt8(ascii: "("): depth += 1
                case UInt8(ascii: ")"):
                    depth -= 1
                    if depth == 0 {
                        var start = open.range.upperBound
                        var end = next.range.lowerBound
                        while start < end, SQLLexer.isSpace(lexer.bytes[start]) { start += 1 }
                        while end > start, SQLLexer.isSpace(lexer.bytes[end - 1]) { end -= 1 }
                        return lexer.text(start..<end)
                    }
                default: break
                }
            }
            position = next.range.upperBound
        }
    }
}

/// Runs parser work where libpg_query has the stack it needs, as ``PostgresAnalyzer/analyze(_:)``
/// does: inline for ordinary statements, on a large-stack thread for big ones.
enum ParserStack {
    /// `body`'s result, or nil when `sql` holds a NUL byte (the C parser would stop there) or is
    /// too large for any stack.
    static func run<T>(_ sql: String, _ body: () -> T) -> T? {
        if sql.utf8.contains(0) { return nil }
        let bytes = sql.utf8.count
        if LargeStack.fitsInline(inputBytes: bytes) { return body() }
        guard let stackSize = LargeStack.stackSize(forInputBytes: bytes) else { return nil }
        return LargeStack.run(stackSize: stackSize, body)
    }
}
