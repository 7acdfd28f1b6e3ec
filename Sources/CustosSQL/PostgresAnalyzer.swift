import CustosCore

/// PostgreSQL statement analysis with the real PostgreSQL 15 parser (libpg_query).
///
/// For each statement in a string (multi-statement strings are split by the parser, so semicolons
/// in literals, comments and dollar quotes are not boundaries), it reports the kind, the tables
/// read and written, the functions called and the flags found anywhere in the tree (see
/// ``StatementInfo``). Text the parser rejects is one `unknown` statement flagged `unparseable`;
/// empty text, or only comments, is no statement at all. The `text` of a one-statement string is
/// the whole input without surrounding blanks and trailing semicolons (comments included); in a
/// multi-statement string, each part's own text.
///
/// Large statements are parsed on a thread with a stack sized for them, since libpg_query
/// recurses once per nesting level; beyond about 4 MiB of SQL, whose worst case no stack would
/// hold, the input is reported `unparseable` (fail closed).
///
/// Results are cached by the input's normalized text (literals replaced by placeholders), so a
/// repeated statement shape costs one `pg_query_normalize` and a dictionary lookup whatever its
/// literals, and a repeated text without literals (normalized, it is itself) only the lookup;
/// `text` is always the caller's own. The analyzer is a value; copies share the cache.
/// It is safe to use from any number of threads at once.
public struct PostgresAnalyzer: StatementAnalyzer {
    let cache: AnalysisCache?

    /// - Parameter cacheCapacity: how many distinct normalized inputs to remember (0 disables the
    ///   cache).
    public init(cacheCapacity: Int = 4096) {
        cache = cacheCapacity > 0 ? AnalysisCache(capacity: cacheCapacity) : nil
    }

    /// The statements in `sql`, each with its kind, tables, functions, flags, own text,
    /// normalized text and fingerprint. Never fails: text the parser rejects (or that holds a NUL
    /// byte, which would hide what follows it from the C parser) is one `unparseable` statement.
    public func analyze(_ sql: String) -> [StatementInfo] {
        let bytes = sql.utf8.count
        if sql.utf8.contains(0) { return [Self.unparseable(sql)] }
        // Parsing recurses once per nesting level: large statements go where the stack fits them.
        if LargeStack.fitsInline(inputBytes: bytes) { return analyzeInline(sql) }
        guard let stackSize = LargeStack.stackSize(forInputBytes: bytes),
            let infos = LargeStack.run(stackSize: stackSize, { analyzeInline(sql) })
        else { return [Self.unparseable(sql)] }
        return infos
    }

    /// The literals and `$n` parameters of `sql` compared with or assigned to a column, and its
    /// passwords, in text order without duplicates. Ranges are UTF-8 byte offsets into `sql` (all
    /// statements of a multi-statement string), quotes, `E`/`U&`/`B`/`X` prefixes, a folded minus
    /// sign and `'a'`-newline-`'b'` continuations included. Not cached. [] when the text does not
    /// parse, holds a NUL byte or is too large for any parser stack (as ``analyze(_:)``, big
    /// statements are parsed on a large-stack thread).
    public func literalUses(_ sql: String) -> [LiteralUse] {
        ParserStack.run(sql) { LiteralUseFinder.uses(in: sql) } ?? []
    }

    /// What a single `COPY` statement copies and how; nil for anything else (another statement,
    /// several statements, text that does not parse or holds a NUL byte).
    public func copyInfo(_ sql: String) -> CopyInfo? {
        ParserStack.run(sql) { CopyAnalysis.info(sql) } ?? nil
    }

    /// The analysis of text the parser rejects: fail closed.
    static func unparseable(_ sql: String) -> StatementInfo {
        StatementInfo(kind: "unknown", flags: [.unparseable], readOnly: false, text: sql)
    }

    private func analyzeInline(_ sql: String) -> [StatementInfo] {
        sql.withCString { cString in
            // Text without literals (extended-protocol statements with `$n` parameters, BEGIN,
            // COMMIT) is its own key: an entry marked verbatim, stored or confirmed when this very
            // text normalized to it, needs no normalizing. Not any entry under this key: normalizing
            // this text might give another key.
            if let entry = cache?.lookup(sql), entry.verbatim, let infos = Self.materialize(entry.statements, sql: sql, cString: cString) {
                return infos
            }
            // Normalizing parses: text it rejects is unparseable, and no further work is needed.
            guard let normalized = PgQuery.normalize(cString) else { return [Self.unparseable(sql)] }
            let verbatim = normalized.utf8.elementsEqual(sql.utf8)
            if let entry = cache?.lookup(normalized), let infos = Self.materialize(entry.statements, sql: sql, cString: cString) {
                if verbatim, !entry.verbatim { cache?.store(normalized, CacheEntry(statements: entry.statements, verbatim: true)) }
                return infos
            }
            guard let (statements, cacheable) = Self.analyzeCold(sql: sql, cString: cString, normalized: normalized) else {
                return [Self.unparseable(sql)]
            }
            if cacheable { cache?.store(normalized, CacheEntry(statements: statements.map(\.cached), verbatim: verbatim)) }
            return statements.map { $0.cached.info(text: $0.text) }
        }
    }

    /// Rebuilds infos from a cache entry with this input's own text; nil when the input cannot be
    /// split as the cached one was (never expected; the caller then analyses it afresh).
    private static func materialize(_ cached: [CachedStatement], sql: String, cString: UnsafePointer<CChar>) -> [StatementInfo]? {
        switch cached.count {
        case 0: return []
        case 1: return [cached[0].info(text: TextRange.trimmedWhole(sql))]
        default:
            guard let ranges = PgQuery.split(cString), ranges.count == cached.count else { return nil }
            let texts = TextRange.texts(of: ranges, in: cString)
            return zip(cached, texts).map { $0.info(text: $1) }
        }
    }

    private struct Analysed {
        var cached: CachedStatement
        var text: String
    }

    /// Parses and walks the input: nil when it does not parse (or the parse tree cannot be read).
    private static func analyzeCold(
        sql: String, cString: UnsafePointer<CChar>, normalized: String
    ) -> (statements: [Analysed], cacheable: Bool)? {
        let walked: [(facts: StatementFacts, range: PgQuery.StatementRange)]?? = PgQuery.withParseTree(cString) { json in
            // A tree libpg_query wrote but we cannot read fails closed (nil: unparseable).
            guard let tape = JSONTape(json), tape.tag(0) == .object else { return nil }
            guard let statements = tape.member(0, "stmts") else { return [] }
            var found: [(facts: StatementFacts, range: PgQuery.StatementRange)] = []
            tape.forEachChild(statements) { raw in
                let range = PgQuery.StatementRange(location: tape.int(raw, "stmt_location"), length: tape.int(raw, "stmt_len"))
                // A statement we cannot find in the tree is still a statement: opaque, not skipped.
                let facts = tape.member(raw, "stmt").map { StatementWalker.analyze(tape, statement: $0) }
                found.append((facts ?? StatementFacts(kind: "unknown", flags: [.opaque]), range))
            }
            return found
        }
        guard let parsed = walked, let statements = parsed else { return nil }
        let cacheable = statements.allSatisfy(\.facts.literalIndependent)
        if statements.count == 1 {
            // One statement: the whole input is its text (comments and all), normalized likewise.
            let facts = statements[0].facts
            let cached = CachedStatement(facts, normalized: TextRange.trimmedWhole(normalized), fingerprint: PgQuery.fingerprint(cString))
            return ([Analysed(cached: cached, text: TextRange.trimmedWhole(sql))], cacheable)
        }
        let texts = TextRange.texts(of: statements.map(\.range), in: cString)
        let analysed = zip(statements, texts).map { statement, text in
            text.withCString { part in
                Analysed(
                    cached: CachedStatement(
                        statement.facts, normalized: PgQuery.normalize(part) ?? text, fingerprint: PgQuery.fingerprint(part)
                    ),
                    text: text
                )
            }
        }
        return (analysed, cacheable)
    }
}

/// Statement texts from the parser's byte ranges.
enum TextRange {
    /// PostgreSQL's whitespace (scan.l): space, tab, newline, carriage return, form feed, vertical tab.
    @inline(__always) static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (byte >= 0x09 && byte <= 0x0D)
    }

    /// The whole input without surrounding whitespace and trailing semicolons: the text of a
    /// one-statement string (so that `SELECT 1;` and `SELECT 1` read the same).
    static func trimmedWhole(_ text: String) -> String {
        let utf8 = text.utf8
        var start = utf8.startIndex
        var end = utf8.endIndex
        while start < end, isSpace(utf8[start]) { start = utf8.index(after: start) }
        while start < end {
            let last = utf8[utf8.index(before: end)]
            guard isSpace(last) || last == UInt8(ascii: ";") else { break }
            end = utf8.index(before: end)
        }
        if start == utf8.startIndex && end == utf8.endIndex { return text }
        return String(text[start..<end])
    }

    /// Each range's text, whitespace-trimmed (a range excludes its terminating semicolon; a length
    /// of 0 means "to the end of the input").
    static func texts(of ranges: [PgQuery.StatementRange], in cString: UnsafePointer<CChar>) -> [String] {
        let total = strlenUTF8(cString)
        return cString.withMemoryRebound(to: UInt8.self, capacity: total) { base in
            ranges.map { range in
                var start = min(max(range.location, 0), total)
                var end = range.length > 0 ? min(start + range.length, total) : total
                while start < end, isSpace(base[start]) { start += 1 }
                while end > start, isSpace(base[end - 1]) || base[end - 1] == UInt8(ascii: ";") { end -= 1 }
                return String(decoding: UnsafeBufferPointer(start: base + start, count: end - start), as: UTF8.self)
            }
        }
    }

    private static func strlenUTF8(_ cString: UnsafePointer<CChar>) -> Int {
        var length = 0
        while cString[length] != 0 { length += 1 }
        return length
    }
}
