/// Queries and other statements that only read, including EXPLAIN of writes without ANALYZE.
enum CorpusReads {
    static let cases: [CorpusCase] = [
        read("SELECT 1"),
        read("select * from users", r: ["users"]),
        read("SELECT id, name FROM public.users WHERE id = 42", r: ["public.users"]),
        read("SELECT * FROM appdb.public.users", r: ["appdb.public.users"]),
        read("TABLE users", r: ["users"]),
        read("TABLE ONLY s.t", r: ["s.t"]),
        read("VALUES (1, 'a'), (2, 'b')"),
        read("SELECT * FROM (VALUES (1), (2)) AS v(x)"),
        read("SELECT * FROM t WHERE id = $1", r: ["t"]),
        read(
            "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id LEFT JOIN payments p USING (order_id)",
            r: ["users", "orders", "payments"]
        ),
        read("SELECT * FROM a, b CROSS JOIN c NATURAL FULL JOIN d", r: ["a", "b", "c", "d"]),
        read("SELECT count(*) FROM orders WHERE total > (SELECT avg(total) FROM orders)", r: ["orders"], f: ["count", "avg"]),
        read("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)", r: ["t", "u"]),
        read(
            "SELECT * FROM t WHERE id IN (SELECT id FROM (SELECT id FROM (SELECT id FROM deep.inner_most) a) b)",
            r: ["t", "deep.inner_most"]
        ),
        read("SELECT (SELECT max(x) FROM m) AS top, lower(name) FROM n", r: ["m", "n"], f: ["max", "lower"]),
        read("SELECT * FROM t ORDER BY (SELECT 1 FROM o LIMIT 1)", r: ["t", "o"]),
        read("SELECT a FROM t GROUP BY a HAVING count(*) > (SELECT 2 FROM h)", r: ["t", "h"], f: ["count"]),
        read(
            "SELECT a FROM t1 UNION SELECT b FROM t2 INTERSECT SELECT c FROM t3 EXCEPT ALL SELECT d FROM t4",
            r: ["t1", "t2", "t3", "t4"]
        ),
        read("(SELECT a FROM t1 ORDER BY a LIMIT 1) UNION ALL (SELECT b FROM t2)", r: ["t1", "t2"]),
        read(
            "WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') SELECT * FROM recent",
            r: ["orders"], f: ["now"]
        ),
        read(
            """
            WITH RECURSIVE tree(id) AS (
                SELECT id FROM nodes WHERE parent IS NULL
                UNION ALL
                SELECT n.id FROM nodes n JOIN tree ON n.parent = tree.id
            ) SELECT * FROM tree
            """,
            r: ["nodes"]
        ),
        // Without RECURSIVE, a CTE sees only earlier ones: `b` inside `a` is the table b.
        read("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b", r: ["b"]),
        read("WITH t AS (SELECT 1) SELECT * FROM public.t, t", r: ["public.t"]),
        read("SELECT * FROM x, (WITH x AS (SELECT 1) SELECT * FROM x) sub", r: ["x"]),
        read("WITH x AS MATERIALIZED (SELECT * FROM src) SELECT * FROM x JOIN y USING (id)", r: ["src", "y"]),
        read("SELECT * FROM t FOR UPDATE", r: ["t"]),
        read("SELECT * FROM t WHERE id = 1 FOR SHARE SKIP LOCKED", r: ["t"]),
        read("SELECT * FROM t JOIN u ON true FOR NO KEY UPDATE OF t NOWAIT", r: ["t", "u"]),
        read("SELECT * FROM generate_series(1, 10) g", f: ["generate_series"]),
        read("SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.t_id = t.id) x", r: ["t", "u"]),
        read(
            "SELECT EXTRACT(year FROM created_at), substring(name FROM 1 FOR 3), ts AT TIME ZONE 'UTC' FROM t",
            r: ["t"], f: ["extract", "substring", "timezone"]
        ),
        read("SELECT pg_catalog.now(), public.my_func(1)", f: ["pg_catalog.now", "public.my_func"]),
        read(#"SELECT "MyFunc"(1), UPPER('x')"#, f: ["myfunc", "upper"]),
        read("SELECT count(*) FILTER (WHERE x > 0) OVER (PARTITION BY y) FROM t", r: ["t"], f: ["count"]),
        read("SELECT CASE WHEN a THEN (SELECT b FROM c) ELSE coalesce(d, 0) END FROM e", r: ["c", "e"]),
        read("SELECT ARRAY(SELECT x FROM arr_src), ROW(1, 2), '{1,2}'::int[]", r: ["arr_src"]),
        read("SELECT * FROM t TABLESAMPLE BERNOULLI (10)", r: ["t"]),
        read("SELECT * FROM ROWS FROM (json_each('{}'), unnest(ARRAY[1])) AS r", f: ["json_each", "unnest"]),
        read("SELECT DISTINCT ON (a) a, b FROM t WHERE a = ANY (SELECT a FROM u) ORDER BY a, b DESC", r: ["t", "u"]),
        read("SELECT * FROM t WHERE id = 1 OR id IN (SELECT tid FROM u WHERE x LIKE 'a%')", r: ["t", "u"]),
        read("SELECT pg_notify('jobs', 'payload')", f: ["pg_notify"]),
        read("SELECT pg_sleep(0.1), current_user, session_user", f: ["pg_sleep"]),
        read("SELECT nextval('seq')", f: ["nextval"]),
        read("SHOW search_path", "show"),
        read("SHOW ALL", "show"),
        read("SHOW TRANSACTION ISOLATION LEVEL", "show"),
        read("EXPLAIN SELECT * FROM t", "explain", r: ["t"]),
        read("EXPLAIN ANALYZE SELECT * FROM t", "explain", r: ["t"]),
        read("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM t JOIN u USING (id)", "explain", r: ["t", "u"]),
        // EXPLAIN without ANALYZE runs nothing: the target is only read, nothing is destructive.
        read("EXPLAIN DELETE FROM t", "explain", r: ["t"]),
        read("EXPLAIN UPDATE t SET a = 1", "explain", r: ["t"]),
        read("EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO t SELECT * FROM u", "explain", r: ["t", "u"]),
        read("EXPLAIN (ANALYZE off) DELETE FROM t", "explain", r: ["t"]),
        read("EXPLAIN (ANALYZE false, VERBOSE) DELETE FROM t WHERE id = 1", "explain", r: ["t"]),
        read("EXPLAIN (ANALYZE 0) DELETE FROM t", "explain", r: ["t"]),
        read("DECLARE c CURSOR FOR SELECT * FROM t", "declare_cursor", r: ["t"]),
        read("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t FOR UPDATE", "declare_cursor", r: ["t"]),
        read("FETCH 10 FROM c", "fetch"),
        read("FETCH ALL IN c", "fetch"),
        read("PREPARE q AS SELECT * FROM t WHERE id = $1", "prepare", r: ["t"]),
        read("PREPARE q (int, text) AS VALUES ($1, $2)", "prepare"),
    ]
}

