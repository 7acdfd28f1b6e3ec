import CustosCore
import Testing

@testable import CustosSQL

/// All corpus cases, for the table-driven test and for the cache-equivalence test.
let corpus: [CorpusCase] = CorpusReads.cases + CorpusWrites.cases + CorpusPrivileged.cases + CorpusSession.cases + CorpusTricky.cases

/// Checks `infos` against a case's expectations, with the case's source line in every message.
func expect(_ infos: [StatementInfo], match corpusCase: CorpusCase) {
    let comment = Comment(rawValue: "\(corpusCase.sourceLocation): \(corpusCase.sql)")
    #expect(infos.count == corpusCase.statements.count, comment)
    for (info, expected) in zip(infos, corpusCase.statements) {
        #expect(info.kind == expected.kind, comment)
        #expect(info.tablesRead.sorted() == expected.read.sorted(), comment)
        #expect(info.tablesWritten.sorted() == expected.written.sorted(), comment)
        #expect(info.functions.sorted() == expected.functions.sorted(), comment)
        #expect(info.flags == expected.flags, comment)
        #expect(info.readOnly == expected.readOnly, comment)
        if let text = expected.text { #expect(info.text == text, comment) }
    }
}

@Suite("PostgresAnalyzer")
struct PostgresAnalyzerTests {
    @Test("corpus is large enough")
    func corpusSize() {
        #expect(corpus.count >= 150)
    }

    @Test("corpus statement", arguments: corpus)
    func corpusCase(_ corpusCase: CorpusCase) {
        expect(PostgresAnalyzer(cacheCapacity: 0).analyze(corpusCase.sql), match: corpusCase)
    }

    @Test("a cached analysis equals a fresh one, for every corpus case, on a miss and on a hit")
    func cachedEqualsFresh() {
        let cached = PostgresAnalyzer()
        let fresh = PostgresAnalyzer(cacheCapacity: 0)
        for corpusCase in corpus {
            let expected = fresh.analyze(corpusCase.sql)
            #expect(cached.analyze(corpusCase.sql) == expected, Comment(rawValue: corpusCase.sql))
            #expect(cached.analyze(corpusCase.sql) == expected, Comment(rawValue: corpusCase.sql))
        }
    }

    @Test("the normalized text replaces literals with placeholders")
    func normalized() throws {
        let info = try #require(PostgresAnalyzer().analyze("SELECT * FROM t WHERE id = 42 AND name = 'bob'").first)
        #expect(info.normalized == "SELECT * FROM t WHERE id = $1 AND name = $2")
        #expect(info.text == "SELECT * FROM t WHERE id = 42 AND name = 'bob'")
        let role = try #require(PostgresAnalyzer().analyze("CREATE ROLE a PASSWORD 'hunter2'").first)
        #expect(!role.normalized.contains("hunter2"))
    }

    @Test("statements that differ only in literals share a fingerprint; different shapes do not")
    func fingerprints() {
        let analyzer = PostgresAnalyzer(cacheCapacity: 0)
        let one = analyzer.analyze("SELECT * FROM t WHERE id = 1 AND name = 'a'")[0]
        let two = analyzer.analyze("select *  from t where id = 999 and name = 'zzz'")[0]
        let other = analyzer.analyze("SELECT * FROM u WHERE id = 1 AND name = 'a'")[0]
        #expect(one.fingerprint.count == 16)
        #expect(one.fingerprint.allSatisfy { $0.isHexDigit })
        #expect(one.fingerprint == two.fingerprint)
        #expect(one.fingerprint != other.fingerprint)
    }

    @Test("a cache hit carries the caller's own text")
    func cacheKeepsText() {
        let analyzer = PostgresAnalyzer()
        let first = analyzer.analyze("SELECT * FROM t WHERE id = 1")
        let second = analyzer.analyze("SELECT * FROM t WHERE id = 2")
        #expect(first[0].text == "SELECT * FROM t WHERE id = 1")
        #expect(second[0].text == "SELECT * FROM t WHERE id = 2")
        #expect(first[0].normalized == second[0].normalized)
        #expect(first[0].tablesRead == ["t"] && second[0].tablesRead == ["t"])

        let multiFirst = analyzer.analyze("UPDATE t SET a = 1 WHERE id = 10; SELECT 'x'")
        let multiSecond = analyzer.analyze("UPDATE t SET a = 22222 WHERE id = 3; SELECT 'yy'")
        #expect(multiFirst.map(\.text) == ["UPDATE t SET a = 1 WHERE id = 10", "SELECT 'x'"])
        #expect(multiSecond.map(\.text) == ["UPDATE t SET a = 22222 WHERE id = 3", "SELECT 'yy'"])
        #expect(multiSecond.map(\.kind) == ["update", "select"])
        #expect(multiSecond.map(\.normalized) == ["UPDATE t SET a = $1 WHERE id = $2", "SELECT $1"])
        #expect(multiFirst.map(\.fingerprint) == multiSecond.map(\.fingerprint))
    }

    @Test("text without literals is its own cache key; text with literals is not")
    func verbatimEntries() throws {
        let analyzer = PostgresAnalyzer()
        let parameterized = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        let first = analyzer.analyze(parameterized)
        #expect(try #require(analyzer.cache?.lookup(parameterized)).verbatim)
        #expect(analyzer.analyze(parameterized) == first)
        #expect(analyzer.analyze("BEGIN;") == PostgresAnalyzer(cacheCapacity: 0).analyze("BEGIN;"))
        #expect(try #require(analyzer.cache?.lookup("BEGIN;")).verbatim)

        let literal = "SELECT abalance FROM pgbench_accounts WHERE aid = 42"
        _ = analyzer.analyze(literal)
        #expect(analyzer.cache?.lookup(literal) == nil)
        let other = PostgresAnalyzer()
        _ = other.analyze(literal)
        #expect(try #require(other.cache?.lookup(parameterized)).verbatim == false)
        // The same text later, without literals, marks the entry its own.
        #expect(other.analyze(parameterized) == first)
        #expect(try #require(other.cache?.lookup(parameterized)).verbatim)
    }

    @Test("only an entry stored from the very same text is used without normalizing")
    func onlyVerbatimEntriesSkipNormalizing() throws {
        let analyzer = PostgresAnalyzer()
        let cache = try #require(analyzer.cache)
        // Keys are normalized texts; an entry that is not the key's own must not answer for a
        // text that happens to equal its key (normalizing that text may give another key).
        let bogus = CachedStatement(StatementFacts(kind: "bogus"), normalized: "SELECT 1", fingerprint: "")
        cache.store("SELECT 1", CacheEntry(statements: [bogus], verbatim: false))
        let info = try #require(analyzer.analyze("SELECT 1").first)
        #expect(info.kind == "select")
        #expect(info.normalized == "SELECT $1")
        // The same entry marked as the text's own is used as it is: the fast path is real.
        cache.store("SELECT 1", CacheEntry(statements: [bogus], verbatim: true))
        #expect(analyzer.analyze("SELECT 1").first?.kind == "bogus")
    }

    @Test("texts that differ only in Unicode normalization are different statements to the cache")
    func cacheComparesBytes() throws {
        // PostgreSQL compares identifiers byte for byte: "café" composed and decomposed name two
        // tables, though Swift's String equality calls them equal.
        let composed = "caf\u{E9}"
        let decomposed = "cafe\u{301}"
        for (one, two) in [
            ("SELECT * FROM \"\(composed)\"", "SELECT * FROM \"\(decomposed)\""),
            ("SELECT * FROM \"\(composed)\" WHERE id = 1", "SELECT * FROM \"\(decomposed)\" WHERE id = 2"),
        ] {
            let analyzer = PostgresAnalyzer()
            let first = try #require(analyzer.analyze(one).first)
            let second = try #require(analyzer.analyze(two).first)
            #expect(first.tablesRead.map { Array($0.utf8) } == [Array(composed.utf8)])
            #expect(second.tablesRead.map { Array($0.utf8) } == [Array(decomposed.utf8)], Comment(rawValue: two))
            #expect(Array(second.normalized.utf8).contains(Array(decomposed.utf8)))
        }
    }

    @Test("set_config results depend on the literal and are never shared through the cache")
    func setConfigNotConflated() {
        let analyzer = PostgresAnalyzer()
        for _ in 0..<2 {
            #expect(analyzer.analyze("SELECT set_config('search_path', 'x', false)")[0].flags.isEmpty)
            #expect(analyzer.analyze("SELECT set_config('role', 'x', false)")[0].flags == [.privileged])
            #expect(analyzer.analyze("SELECT set_config('search_path', 'y', false)")[0].flags.isEmpty)
        }
    }

    @Test("the cache stays within its capacity")
    func cacheBounded() {
        let cache = AnalysisCache(capacity: 8)
        for index in 0..<100 { cache.store("key \(index)", CacheEntry(statements: [], verbatim: false)) }
        #expect(cache.count <= 8)
        #expect(cache.lookup("key 99") != nil)
        #expect(cache.lookup("key 0") == nil)
    }

    @Test("each statement of a multi-statement string has its own normalized text and fingerprint")
    func multiStatementParts() {
        let infos = PostgresAnalyzer().analyze("SELECT 1; SELECT * FROM t WHERE a = 'x'")
        #expect(infos.map(\.normalized) == ["SELECT $1", "SELECT * FROM t WHERE a = $1"])
        #expect(infos[0].fingerprint != infos[1].fingerprint)
        #expect(infos[1].fingerprint == PostgresAnalyzer().analyze("SELECT * FROM t WHERE a = 'y'")[0].fingerprint)
    }

    @Test("unparseable input is one statement carrying the whole text")
    func unparseableText() {
        let sql = "SELECT 1; DROP TABL x"
        #expect(PostgresAnalyzer().analyze(sql) == [StatementInfo(kind: "unknown", flags: [.unparseable], readOnly: false, text: sql)])
    }

    @Test("deeply nested expressions do not crash, inline or on a large stack")
    func deepNesting() {
        let analyzer = PostgresAnalyzer(cacheCapacity: 0)
        // ~8000 levels: analysed on the caller's thread when its stack has room.
        let inline = "SELECT " + String(repeating: "1+", count: 8000) + "1 FROM t"
        #expect(analyzer.analyze(inline).map(\.tablesRead) == [["t"]])
        // Small statements never ask; large ones are measured against the thread's stack.
        #expect(LargeStack.fitsInline(inputBytes: 100))
        #expect(!LargeStack.fitsInline(inputBytes: 1 << 20))
        // ~60000 levels: crashes libpg_query on an 8 MiB stack; must run on a large one.
        let deep = "SELECT " + String(repeating: "a||", count: 60000) + "pg_read_file('x') FROM t"
        let infos = analyzer.analyze(deep)
        #expect(infos.count == 1)
        #expect(infos.first?.flags == [.privileged])
        #expect(infos.first?.tablesRead == ["t"])
        // Bison's own limit: reported as unparseable, not a crash.
        let parens = "SELECT " + String(repeating: "(", count: 20000) + "1" + String(repeating: ")", count: 20000)
        #expect(analyzer.analyze(parens).first?.flags == [.unparseable])
    }

    @Test("a large flat statement is analysed whole")
    func largeStatement() {
        let rows = (0..<20000).map { "(\($0), 'name \($0)')" }.joined(separator: ", ")
        let infos = PostgresAnalyzer().analyze("INSERT INTO t (id, name) VALUES " + rows)
        #expect(infos.map(\.kind) == ["insert"])
        #expect(infos.first?.tablesWritten == ["t"])
    }

    @Test("input beyond what a stack could hold fails closed")
    func tooLarge() {
        let sql = "SELECT 1" + String(repeating: " ", count: 5 << 20)
        #expect(PostgresAnalyzer().analyze(sql).first?.flags == [.unparseable])
    }

    @Test("concurrent analyses agree with sequential ones")
    func concurrent() async {
        let analyzer = PostgresAnalyzer(cacheCapacity: 64)
        let sample = Array(corpus.prefix(120))
        let expected = sample.map { PostgresAnalyzer(cacheCapacity: 0).analyze($0.sql) }
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var bad = 0
                    for round in 0..<20 {
                        for (index, corpusCase) in sample.enumerated() where (index + worker + round) % 3 == 0 {
                            if analyzer.analyze(corpusCase.sql) != expected[index] { bad += 1 }
                        }
                    }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
    }
}

@Suite("Prepared statement names")
struct PreparedNameTests {
    @Test("PREPARE, EXECUTE and DEALLOCATE carry the name; PREPARE the prepared kind")
    func names() {
        let analyzer = PostgresAnalyzer()
        let prepare = analyzer.analyze("PREPARE wipe(int) AS DELETE FROM orders WHERE id = $1")[0]
        #expect(prepare.kind == "prepare" && prepare.preparedName == "wipe" && prepare.preparedKind == "delete")
        #expect(prepare.tablesWritten == ["orders"])
        let execute = analyzer.analyze("EXECUTE wipe(3)")[0]
        #expect(execute.kind == "execute" && execute.preparedName == "wipe" && execute.flags.contains(.opaque))
        #expect(analyzer.analyze("DEALLOCATE wipe")[0].preparedName == "wipe")
        #expect(analyzer.analyze("DEALLOCATE ALL")[0].preparedName == nil)
        #expect(analyzer.analyze("SELECT 1")[0].preparedName == nil)
    }
}
