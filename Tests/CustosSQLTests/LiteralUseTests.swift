import CustosCore
import Testing

@testable import CustosSQL

/// Each use of `sql` as `token -> table.column` (`?` for no table) or `token -> password`, where
/// token is the exact UTF-8 slice of the range, or `$n` for a parameter.
private func uses(_ sql: String) -> [String] {
    PostgresAnalyzer(cacheCapacity: 0).literalUses(sql).map { use in
        let token: String
        if let range = use.range {
            let bytes = Array(sql.utf8)
            token = range.upperBound <= bytes.count ? String(decoding: bytes[range], as: UTF8.self) : "<out of bounds \(range)>"
        } else {
            token = "$\(use.parameter ?? -1)"
        }
        switch use.role {
        case .column(let table, let column): return "\(token) -> \(table ?? "?").\(column)"
        case .password: return "\(token) -> password"
        case .unknown: return "\(token) -> ?"
        }
    }
}

@Suite("PostgresAnalyzer.literalUses")
struct LiteralUseTests {
    @Test("a statement pairing too many values with too many columns gives every literal an unknown column")
    func tooComplexFailsClosed() {
        // 20 comparisons of 32 columns with 32 literals: 20,480 pairs, past the limit.
        let comparisons = (0..<20).map { group in
            let columns = (1...32).map { "c\(group)_\($0)" }.joined(separator: " + ")
            let values = (1...32).map { "'v\(group)_\($0)'" }.joined(separator: " || ")
            return "(\(columns)) = (\(values))"
        }
        let found = uses("SELECT 1 FROM t WHERE \(comparisons.joined(separator: " AND ")) AND c = $1")
        let expected = ["1 -> ?"] + (0..<20).flatMap { group in (1...32).map { "'v\(group)_\($0)' -> ?" } } + ["$1 -> ?"]
        #expect(found.count == expected.count)
        #expect(found == expected, "every literal, in text order, then the parameter")
        // Below the limit the columns are followed as usual.
        #expect(uses("SELECT 1 FROM t WHERE c1 + c2 = 'a'") == ["'a' -> t.c2", "'a' -> t.c1"])
    }

    // MARK: Comparisons

    @Test func equalityWithStringLiteral() throws {
        let sql = "SELECT * FROM customers WHERE email = 'bob@example.com'"
        let found = PostgresAnalyzer().literalUses(sql)
        #expect(found.count == 1)
        let use = try #require(found.first)
        let range = try #require(use.range)
        #expect(String(decoding: Array(sql.utf8)[range], as: UTF8.self) == "'bob@example.com'")
        #expect(use.role == .column(table: "customers", column: "email"))
        #expect(use.parameter == nil)
    }

    @Test func aliasResolvesToQualifiedTable() {
        #expect(uses("SELECT * FROM public.customers c WHERE c.ssn = '078-05-1120'") == ["'078-05-1120' -> public.customers.ssn"])
        #expect(uses("SELECT * FROM public.customers WHERE customers.ssn = '1'") == ["'1' -> public.customers.ssn"])
        #expect(uses("SELECT * FROM customers AS c JOIN orders o ON o.cid = c.id WHERE c.email = 'a' AND o.note <> 'b'") == [
            "'a' -> customers.email", "'b' -> orders.note",
        ])
    }

    @Test func unqualifiedColumnWithSeveralTablesHasNoTable() {
        #expect(uses("SELECT * FROM a, b WHERE email = 'x'") == ["'x' -> ?.email"])
        #expect(uses("SELECT * FROM a JOIN b ON true WHERE email = 'x'") == ["'x' -> ?.email"])
        #expect(uses("SELECT * FROM (SELECT email FROM a) s WHERE email = 'x'") == ["'x' -> ?.email"])
        #expect(uses("SELECT * FROM (SELECT email FROM a) s WHERE s.email = 'x'") == ["'x' -> ?.email"])
    }

    @Test func cteIsNotATable() {
        #expect(uses("WITH c AS (SELECT email FROM customers) SELECT * FROM c WHERE email = 'x'") == ["'x' -> ?.email"])
    }

    @Test func subqueryUsesItsOwnFromClause() {
        #expect(uses("SELECT * FROM orders WHERE cid IN (SELECT id FROM customers WHERE email = 'x') AND total > 10") == [
            "'x' -> customers.email", "10 -> orders.total",
        ])
    }

    @Test func functionsOnBothSides() {
        #expect(uses("SELECT * FROM customers WHERE lower(email) = lower('X@Y.COM')") == ["'X@Y.COM' -> customers.email"])
        #expect(uses("SELECT 1 FROM t WHERE coalesce(a.email, '') = 'x'") == ["'' -> a.email", "'x' -> a.email"])
    }

    @Test func inListLikeBetweenDistinctAny() {
        #expect(uses("SELECT * FROM customers WHERE email IN ('a', 'b')") == ["'a' -> customers.email", "'b' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE email NOT IN ('a')") == ["'a' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE email LIKE 'a%'") == ["'a%' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE email ILIKE 'a%' OR email SIMILAR TO 'b%'") == [
            "'a%' -> customers.email", "'b%' -> customers.email",
        ])
        #expect(uses("SELECT * FROM t WHERE born BETWEEN DATE '1970-01-01' AND '1980-01-01'") == [
            "'1970-01-01' -> t.born", "'1980-01-01' -> t.born",
        ])
        #expect(uses("SELECT * FROM t WHERE x IS DISTINCT FROM 'q' AND NULLIF(y, 'z') IS NULL") == ["'q' -> t.x", "'z' -> t.y"])
        #expect(uses("SELECT * FROM t WHERE x = ANY('{a,b}'::text[])") == ["'{a,b}' -> t.x"])
        #expect(uses("SELECT * FROM t WHERE x = ANY(ARRAY['a', $1])") == ["'a' -> t.x", "$1 -> t.x"])
    }

    @Test func parametersHaveNoRange() {
        let found = PostgresAnalyzer().literalUses("SELECT * FROM customers WHERE email = $1 AND ssn = $2::text OR email = $1")
        #expect(found == [
            LiteralUse(parameter: 1, role: .column(table: "customers", column: "email")),
            LiteralUse(parameter: 2, role: .column(table: "customers", column: "ssn")),
        ])
    }

    @Test func reversedComparison() {
        #expect(uses("SELECT * FROM customers WHERE 'x' = email") == ["'x' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE 5 < age") == ["5 -> customers.age"])
    }

    @Test func rowComparisonsPairElementwise() {
        #expect(uses("SELECT * FROM t WHERE (a, b) = ('x', 'y')") == ["'x' -> t.a", "'y' -> t.b"])
        #expect(uses("SELECT * FROM t WHERE (a, b) IN (('x', 'y'), ('z', 'w'))") == ["'x' -> t.a", "'y' -> t.b", "'z' -> t.a", "'w' -> t.b"])
    }

    @Test func inSubqueryOfConstants() {
        #expect(uses("SELECT * FROM customers WHERE email IN (VALUES ('a'), ('b'))") == ["'a' -> customers.email", "'b' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE email = ANY (SELECT 'a')") == ["'a' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE email IN (SELECT e FROM other WHERE k = 'z')") == ["'z' -> other.k"])
    }

    @Test func caseSubjectAndFunctionArguments() {
        #expect(uses("SELECT CASE email WHEN 'a' THEN 1 END FROM customers") == ["'a' -> customers.email"])
        #expect(uses("SELECT * FROM customers WHERE starts_with(email, 'bob')") == ["'bob' -> customers.email"])
    }

    @Test func statementsAroundQueries() {
        #expect(uses("PREPARE p AS SELECT * FROM customers WHERE email = $1") == ["$1 -> customers.email"])
        #expect(uses("EXPLAIN ANALYZE SELECT * FROM customers WHERE email = 'x'") == ["'x' -> customers.email"])
        #expect(uses("DECLARE cur CURSOR FOR SELECT * FROM customers WHERE ssn = 'x'") == ["'x' -> customers.ssn"])
        #expect(uses("SELECT * FROM t WHERE data->>'ssn' = '1' -- 'not a literal'") == ["'ssn' -> t.data", "'1' -> t.data"])
    }

    @Test func literalsNotComparedAreNotUses() {
        #expect(uses("SELECT 'x'") == [])
        #expect(uses("SELECT 'x', email FROM customers") == [])
        #expect(uses("SELECT * FROM customers WHERE email IS NULL OR email = NULL") == [])
        #expect(uses("SELECT * FROM customers LIMIT 10") == [])
    }

    // MARK: Literal extents

    @Test func literalExtents() {
        #expect(uses(#"SELECT * FROM t WHERE a = E'it\'s ''quoted'''"#) == [#"E'it\'s ''quoted''' -> t.a"#])
        #expect(uses("SELECT * FROM t WHERE a = 'it''s'") == ["'it''s' -> t.a"])
        #expect(uses("SELECT * FROM t WHERE a = $$it's$$ OR b = $tag$a $$ b$tag$") == ["$$it's$$ -> t.a", "$tag$a $$ b$tag$ -> t.b"])
        #expect(uses("SELECT * FROM t WHERE a = U&'d\\0061t' UESCAPE '!' OR b = U&'x'") == ["U&'d\\0061t' UESCAPE '!' -> t.a", "U&'x' -> t.b"])
        #expect(uses("SELECT * FROM t WHERE a = B'101' OR b = X'ff' OR c = N'n'") == ["B'101' -> t.a", "X'ff' -> t.b", "'n' -> t.c"])
        #expect(uses("SELECT * FROM t WHERE a = 'x'\n  'y'") == ["'x'\n  'y' -> t.a"])
        #expect(uses("SELECT * FROM t WHERE a = 1.5e-3 OR b = .5 OR c = 42") == ["1.5e-3 -> t.a", ".5 -> t.b", "42 -> t.c"])
        #expect(uses("SELECT * FROM t WHERE a = -5 OR b = - /* c */ 2.5 OR c = -(-(4))") == ["-5 -> t.a", "- /* c */ 2.5 -> t.b", "-(-(4)) -> t.c"])
        #expect(uses("SELECT * FROM t WHERE a = interval '1 day' OR b = '1'::int OR c = CAST('x' AS text)") == [
            "'1 day' -> t.a", "'1' -> t.b", "'x' -> t.c",
        ])
        #expect(uses("SELECT * FROM t WHERE active = true") == ["true -> t.active"])
    }

    @Test func byteOffsetsAfterNonASCIIText() {
        #expect(uses("SELECT 'héllo ✓ 🎉' AS x, * FROM t WHERE note = 'ünïcödé ✓'") == ["'ünïcödé ✓' -> t.note"])
        #expect(uses("SELECT * FROM t /* ümlaut */ WHERE \"naïve\" = 'x'") == ["'x' -> t.naïve"])
    }

    @Test func multiStatementOffsetsAreRelativeToTheWholeInput() {
        let sql = "SELECT 1; SELECT * FROM a WHERE x = 'one';\n  UPDATE b SET y = 'two' WHERE z = $1"
        #expect(uses(sql) == ["'one' -> a.x", "'two' -> b.y", "$1 -> b.z"])
    }

    // MARK: Assignments

    @Test func insertWithColumnsAndSeveralRows() {
        #expect(uses("INSERT INTO public.customers (email, ssn) VALUES ('a@b', $1), (lower('C@D'), '2'::text)") == [
            "'a@b' -> public.customers.email", "$1 -> public.customers.ssn", "'C@D' -> public.customers.email", "'2' -> public.customers.ssn",
        ])
    }

    @Test func insertWithoutColumnsUsesStar() {
        #expect(uses("INSERT INTO customers VALUES (1, 'a@b', DEFAULT, NULL)") == ["1 -> customers.*", "'a@b' -> customers.*"])
    }

    @Test func insertSelect() {
        #expect(uses("INSERT INTO customers (email, note) SELECT 'a@b', note FROM staging") == ["'a@b' -> customers.email"])
        #expect(uses("INSERT INTO t (a) SELECT 'x' UNION ALL SELECT 'y'") == ["'x' -> t.a", "'y' -> t.a"])
    }

    @Test func updateSet() {
        #expect(uses("UPDATE customers SET email = 'new@x', note = note || '!' WHERE id = 7") == [
            "'new@x' -> customers.email", "'!' -> customers.note", "7 -> customers.id",
        ])
        #expect(uses("UPDATE public.customers c SET ssn = $1 WHERE c.email = $2") == [
            "$1 -> public.customers.ssn", "$2 -> public.customers.email",
        ])
        #expect(uses("UPDATE t SET (a, b) = ('x', $2)") == ["'x' -> t.a", "$2 -> t.b"])
        #expect(uses("UPDATE t SET (a, b) = (SELECT 'x', 'y')") == ["'x' -> t.a", "'y' -> t.b"])
    }

    @Test func onConflictDoUpdate() {
        let sql = "INSERT INTO customers AS c (email, ssn) VALUES ('a', 'b') ON CONFLICT (email) DO UPDATE SET ssn = 'c' WHERE c.note = 'd'"
        #expect(uses(sql) == ["'a' -> customers.email", "'b' -> customers.ssn", "'c' -> customers.ssn", "'d' -> customers.note"])
        #expect(uses("INSERT INTO t (a) VALUES ('x') ON CONFLICT DO UPDATE SET a = excluded.a || 'y'") == ["'x' -> t.a", "'y' -> t.a"])
    }

    @Test func merge() {
        let sql = """
            MERGE INTO customers c USING staging s ON c.id = s.id
            WHEN MATCHED THEN UPDATE SET email = 'b'
            WHEN NOT MATCHED THEN INSERT (email, ssn) VALUES ('c', $1)
            """
        #expect(uses(sql) == ["'b' -> customers.email", "'c' -> customers.email", "$1 -> customers.ssn"])
    }

    @Test func deleteUsing() {
        #expect(uses("DELETE FROM customers c USING orders o WHERE o.cid = c.id AND c.email = 'x'") == ["'x' -> customers.email"])
    }

    // MARK: Passwords

    @Test func rolePasswords() {
        #expect(uses("CREATE ROLE x LOGIN PASSWORD 'p' VALID UNTIL '2030-01-01'") == ["'p' -> password"])
        #expect(uses("ALTER USER x WITH PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'") == ["'SCRAM-SHA-256$4096:c2FsdA==$a:b' -> password"])
        #expect(uses("ALTER ROLE x ENCRYPTED PASSWORD E'it\\'s'") == ["E'it\\'s' -> password"])
        #expect(uses("CREATE USER u PASSWORD $$p'w$$") == ["$$p'w$$ -> password"])
        #expect(uses("CREATE GROUP g WITH PASSWORD /* why */ 'gp'") == ["'gp' -> password"])
        #expect(uses("ALTER ROLE x PASSWORD NULL") == [])
        #expect(uses("ALTER ROLE x RENAME TO y") == [])
    }

    @Test func foreignPasswords() {
        #expect(uses("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'u', password 'p')") == ["'p' -> password"])
        #expect(uses("ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password 'p2', ADD \"password\" $$x$$)") == [
            "'p2' -> password", "$$x$$ -> password",
        ])
        #expect(uses("ALTER USER MAPPING FOR bob SERVER s OPTIONS (DROP password)") == [])
        #expect(uses("CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (host 'h', password 'p')") == ["'p' -> password"])
        #expect(uses("ALTER SERVER s OPTIONS (SET password 'q')") == ["'q' -> password"])
        #expect(uses("CREATE SUBSCRIPTION s CONNECTION 'host=x password=y' PUBLICATION p") == ["'host=x password=y' -> password"])
    }

    @Test func passwordAfterNonASCIIAndInSecondStatement() {
        #expect(uses("SELECT 'ü'; ALTER ROLE \"jöe\" PASSWORD 'p✓'") == ["'p✓' -> password"])
    }

    // MARK: Robustness

    @Test func unparseableAndOddInputs() {
        #expect(uses("SELEC * FROM t WHERE a = 'x'") == [])
        #expect(uses("SELECT * FROM t WHERE a = 'x") == [])
        #expect(uses("") == [])
        #expect(uses("-- only a comment") == [])
        #expect(uses("SELECT * FROM t WHERE a = 'x'\0 OR b = 'y'") == [])
    }

    @Test func deepExpressionsDoNotCrash() {
        let chain = "SELECT * FROM t WHERE a = " + Array(repeating: "1", count: 10000).joined(separator: "+")
        let found = PostgresAnalyzer().literalUses(chain)
        #expect(!found.isEmpty)
        let nested = "SELECT * FROM t WHERE a = " + String(repeating: "(", count: 3000) + "'x'" + String(repeating: ")", count: 3000)
        #expect(PostgresAnalyzer().literalUses(nested).count == 1)
    }

    @Test func longInListIsExaminedWhole() {
        let items = (0..<5000).map { "'user\($0)@example.com'" }
        let sql = "SELECT * FROM customers WHERE email IN (" + items.joined(separator: ", ") + ")"
        let found = PostgresAnalyzer().literalUses(sql)
        #expect(found.count == 5000)
        #expect(found.allSatisfy { $0.role == .column(table: "customers", column: "email") })
    }

    @Test func lexerNeverRunsPastTheInput() {
        let lexer = SQLLexer("'abc")
        #expect(lexer.literalRange(at: 0) == 0..<4)
        #expect(SQLLexer("$x$ab").literalRange(at: 0) == 0..<5)
        #expect(SQLLexer("- (").literalRange(at: 0) == 0..<3)
        #expect(SQLLexer("x").literalRange(at: 5) == nil)
        #expect(SQLLexer("/* unterminated").token(at: 0).kind == .end)
    }
}
