/// Comments, quoting, dollar quotes, Unicode escapes, case, multi-statement strings, and text the
/// parser rejects: the forms that defeat analysis by pattern matching.
enum CorpusTricky {
    static let cases: [CorpusCase] = [
        // Comments
        read("-- leading comment\nSELECT * FROM t", r: ["t"]),
        read("SELECT * FROM t -- DROP TABLE t", r: ["t"]),
        read("/* DROP TABLE users; */ SELECT 1"),
        read("/* outer /* nested; DROP TABLE x; */ still a comment */ SELECT * FROM t", r: ["t"]),
        read("SELECT/**/*/**/FROM/**/t", r: ["t"]),
        c("DELETE /* WHERE id = 1 */ FROM t", "delete", w: ["t"], flags: [.destructive]),
        c("DELETE FROM t -- WHERE id = 1", "delete", w: ["t"], flags: [.destructive]),
        c("DELETE FROM t /* no where */ WHERE /* yes where */ id = 1", "delete", w: ["t"]),
        // Quoting and case
        read(#"SELECT * FROM "Users""#, r: ["Users"]),
        read(#"SELECT * FROM "public"."Order Items""#, r: ["public.Order Items"]),
        read("SELECT * FROM USERS", r: ["users"]),
        read(#"SELECT * FROM "users""quoted""#, r: [#"users"quoted"#]),
        c(#"DROP TABLE "Weird Name""#, "drop", w: ["Weird Name"], flags: [.destructive]),
        c("DeLeTe FrOm UsErS", "delete", w: ["users"], flags: [.destructive]),
        c("dRoP tAbLe T", "drop", w: ["t"], flags: [.destructive]),
        c("tRuNcAtE \"T\"", "truncate", w: ["T"], flags: [.destructive]),
        read("sElEcT * fRoM T", r: ["t"]),
        // Dollar quotes and strings with statement-like contents
        read("SELECT $$DROP TABLE t; DELETE FROM u$$"),
        read("SELECT $tag$ ; DROP TABLE t; $tag$ AS x FROM y", r: ["y"]),
        read("SELECT 'a;b', 'DELETE FROM t' FROM t2", r: ["t2"]),
        read(#"SELECT E'it\'s; DROP TABLE t' FROM t3"#, r: ["t3"]),
        read("SELECT $a$ $b$ ; $b$ $a$"),
        // Unicode escapes
        read(#"SELECT * FROM U&"\0075sers""#, r: ["users"]),
        c(#"DELETE FROM U&"d\0061t\+000061""#, "delete", w: ["data"], flags: [.destructive]),
        read(#"SELECT * FROM U&"!0075sers" UESCAPE '!'"#, r: ["users"]),
        read(#"SELECT U&'\0041\0042'"#),
        read("SELECT * FROM \"Tábla\" WHERE nombre = 'José'", r: ["Tábla"]),
        read("SELECT * FROM \"表\"", r: ["表"]),
        // Whitespace
        c("\n\t DELETE\nFROM\tt\n", "delete", w: ["t"], flags: [.destructive]),
        // Multi-statement strings: each part is its own statement, with its own text.
        multi("SELECT 1; DROP TABLE t", [
            s("select", ro: true, text: "SELECT 1"),
            s("drop", w: ["t"], flags: [.destructive], text: "DROP TABLE t"),
        ]),
        multi("BEGIN; DELETE FROM t WHERE id = 1; COMMIT;", [
            s("begin", text: "BEGIN"),
            s("delete", w: ["t"], text: "DELETE FROM t WHERE id = 1"),
            s("commit", text: "COMMIT"),
        ]),
        multi("SELECT 'a;b'; SELECT $$;$$; SELECT 3", [
            s("select", ro: true, text: "SELECT 'a;b'"),
            s("select", ro: true, text: "SELECT $$;$$"),
            s("select", ro: true, text: "SELECT 3"),
        ]),
        multi("SELECT 1; /* c; */ SELECT 2 -- ; x", [
            s("select", ro: true, text: "SELECT 1"),
            s("select", ro: true, text: "/* c; */ SELECT 2 -- ; x"),
        ]),
        multi("SET ROLE admin; SELECT * FROM payroll", [
            s("set", flags: [.privileged], text: "SET ROLE admin"),
            s("select", r: ["payroll"], ro: true, text: "SELECT * FROM payroll"),
        ]),
        multi("SELECT 1;;SELECT 2", [s("select", ro: true, text: "SELECT 1"), s("select", ro: true, text: "SELECT 2")]),
        multi("select * from t;\nWITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d;\n", [
            s("select", r: ["t"], ro: true, text: "select * from t"),
            s("select", w: ["t"], f: ["count"], flags: [.destructive], text: "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d"),
        ]),
        multi("PREPARE p AS DELETE FROM t; EXECUTE p; DEALLOCATE p", [
            s("prepare", w: ["t"], flags: [.destructive], text: "PREPARE p AS DELETE FROM t"),
            s("execute", flags: [.opaque], text: "EXECUTE p"),
            s("deallocate", text: "DEALLOCATE p"),
        ]),
        // One statement: its text is the whole input without surrounding blanks and semicolons.
        multi("  SELECT * FROM t;  ", [s("select", r: ["t"], ro: true, text: "SELECT * FROM t")]),
        // Rejected by the parser: one unparseable statement for the whole input.
        garbage("SELEC 1"),
        garbage("DROP TABLE"),
        garbage("SELECT * FROM"),
        garbage("DELETE FROM t WHERE"),
        garbage("'unterminated"),
        garbage("SELECT $$unterminated"),
        garbage("/* unterminated comment DROP TABLE t"),
        garbage("SELECT ((1)"),
        garbage("💥"),
        garbage("SELECT 1; DROP TABL x"),
        garbage("DROP TABLE t; SELEC 1"),
        garbage("SELECT 1\u{0}; DROP TABLE t"),
        garbage("SELECT * FROM t WHERE id = 1 AND"),
        // No statement at all
        empty(""),
        empty("   "),
        empty("\n\t\r\n"),
        empty("-- just a comment"),
        empty("/* block */"),
        empty(";"),
        empty(" ; ; "),
    ]
}
