"""psycopg 3 through Custos: simple and extended protocol, server-side binding, prepared and
binary, executemany and pipeline mode, COPY both ways, cancel, the transaction API — and the
recording of each statement (text, parameters, tag, rows, error)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors, sql

from custos_e2e import verify_chain, verify_shown_events


@pytest.fixture
def connect(gateway, token, app):
    conns = []

    def _connect(**kw) -> psycopg.Connection:
        conn = psycopg.connect(gateway.dsn(kw.pop("token", token), app=kw.pop("app", app)), **kw)
        conns.append(conn)
        return conn

    yield _connect
    for conn in conns:
        conn.close()


def recorded(gateway, app):
    session = gateway.session_by_app(app)
    shown = gateway.show(session["id"])
    verify_shown_events(shown)
    assert session["outcome"] == "closed", session
    return shown["statements"]


@pytest.fixture
def scratch(direct):
    """A scratch table created and dropped directly on PostgreSQL."""
    db = direct()
    db.execute("drop table if exists e2e_pg3")
    db.execute("create table e2e_pg3 (id int primary key, name text, data bytea)")
    yield db
    db.execute("drop table if exists e2e_pg3")


def test_simple_protocol(gateway, connect, app):
    with connect(autocommit=True) as conn:
        # Without parameters psycopg sends a simple Query; a ClientCursor binds client-side.
        assert conn.execute("select count(*) from orders").fetchone() == (600,)
        cur = psycopg.ClientCursor(conn)
        cur.execute("select full_name from customers where id = %s", (2,))
        assert cur.fetchone() == ("Emma Lopez",)
        assert conn.info.parameter_status("application_name") == app
        assert conn.info.parameter_status("server_encoding") == "UTF8"
    statements = recorded(gateway, app)
    assert [(s["protocol"], s["text"], s["command_tag"], s["rows"]) for s in statements] == [
        ("simple", "select count(*) from orders", "SELECT 1", 1),
        ("simple", "select full_name from customers where id = 2", "SELECT 1", 1),
    ]


def test_extended_protocol_server_side_binding(gateway, connect, app, scratch):
    with connect(autocommit=True) as conn:
        # psycopg sends ints in binary (int2 here) and strs as text
        assert conn.execute("select %s::int + %s::int, %s::text, %s::text", (40, 2, None, "txt")).fetchone() == (42, None, "txt")
        # prepare=True: a named server-side statement, executed twice with different parameters
        for ident, name in ((1, "one"), (2, "two")):
            conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (ident, name), prepare=True)
        # binary parameters (%b) and binary results
        cur = conn.cursor(binary=True)
        cur.execute("update e2e_pg3 set data = %b where id = %s", (b"\x01\x02\xff", 1))
        assert cur.rowcount == 1
        cur.execute("select id, name, data from e2e_pg3 order by id")
        assert cur.fetchall() == [(1, "one", b"\x01\x02\xff"), (2, "two", None)]
    assert scratch.execute("select id, name, data from e2e_pg3 order by id").fetchall() == [
        (1, "one", b"\x01\x02\xff"), (2, "two", None)]

    statements = recorded(gateway, app)
    assert all(s["protocol"] == "extended" and s["decision"] == "allow" and s["error"] is None for s in statements)
    assert [s["text"] for s in statements] == [
        "select $1::int + $2::int, $3::text, $4::text",
        "insert into e2e_pg3 (id, name) values ($1, $2)",
        "insert into e2e_pg3 (id, name) values ($1, $2)",
        "update e2e_pg3 set data = $1 where id = $2",
        "select id, name, data from e2e_pg3 order by id",
    ]
    first, ins1, ins2, upd, sel = statements
    # binary parameters are recorded as \x<hex>, text ones as text, NULL as null
    assert first["parameters"] == ["\\x0028", "\\x0002", None, "txt"]
    assert first["command_tag"] == "SELECT 1" and first["rows"] == 1
    assert ins1["parameters"] == ["\\x0001", "one"] and ins2["parameters"] == ["\\x0002", "two"]
    assert ins1["command_tag"] == ins2["command_tag"] == "INSERT 0 1"
    assert upd["parameters"] == ["\\x0102ff", "\\x0001"]
    assert upd["command_tag"] == "UPDATE 1" and upd["rows"] == 1
    assert sel["command_tag"] == "SELECT 2" and sel["rows"] == 2 and sel["parameters"] == []


def test_executemany_and_pipeline(gateway, connect, app, scratch):
    with connect(autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("insert into e2e_pg3 (id, name) values (%s, %s)", [(i, f"n{i}") for i in range(1, 6)])
        with conn.pipeline():
            conn.execute("update e2e_pg3 set name = 'piped' where id = %s", (1,))
            conn.execute("delete from e2e_pg3 where id = %s", (5,))
            cur = conn.execute("select count(*) from e2e_pg3")
        assert cur.fetchone() == (4,)
    assert scratch.execute("select id, name from e2e_pg3 order by id").fetchall() == [
        (1, "piped"), (2, "n2"), (3, "n3"), (4, "n4")]
    statements = recorded(gateway, app)
    inserts = [s for s in statements if s["text"].startswith("insert")]
    assert [s["parameters"] for s in inserts] == [[f"\\x000{i}", f"n{i}"] for i in range(1, 6)]
    assert all(s["command_tag"] == "INSERT 0 1" and s["rows"] == 1 for s in inserts)
    tail = [(s["text"], s["parameters"], s["command_tag"]) for s in statements[-3:]]
    assert tail == [
        ("update e2e_pg3 set name = 'piped' where id = $1", ["\\x0001"], "UPDATE 1"),
        ("delete from e2e_pg3 where id = $1", ["\\x0005"], "DELETE 1"),
        ("select count(*) from e2e_pg3", [], "SELECT 1"),
    ]


def test_copy_both_directions(gateway, connect, app, scratch):
    with connect(autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY e2e_pg3 (id, name) FROM STDIN") as copy:
                for i in range(1, 1001):
                    copy.write_row((i, f"row {i}"))
            with cur.copy("COPY (select id, name from e2e_pg3 where id <= 3 order by id) TO STDOUT") as copy:
                rows = [tuple(r) for r in copy.rows()]
        assert rows == [("1", "row 1"), ("2", "row 2"), ("3", "row 3")]
    assert scratch.execute("select count(*), max(name) from e2e_pg3").fetchone() == (1000, "row 999")
    copy_in, copy_out = recorded(gateway, app)
    assert copy_in["text"] == "COPY e2e_pg3 (id, name) FROM STDIN"
    assert copy_in["command_tag"] == "COPY 1000" and copy_in["rows"] == 1000 and copy_in["error"] is None
    assert copy_out["command_tag"] == "COPY 3" and copy_out["rows"] == 3


def test_cancel_long_query_then_connection_still_works(gateway, connect, app):
    with connect(autocommit=True) as conn:
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("select pg_sleep(30)")
        finally:
            timer.cancel()
        elapsed = time.monotonic() - started
        assert info.value.sqlstate == "57014"
        assert elapsed < 15, f"cancel took {elapsed:.1f}s"
        assert conn.execute("select 'alive'").fetchone() == ("alive",)
    statements = recorded(gateway, app)
    assert statements[0]["text"] == "select pg_sleep(30)"
    assert statements[0]["error"]["sqlstate"] == "57014"
    assert "cancel" in statements[0]["error"]["message"]
    assert statements[1]["error"] is None and statements[1]["command_tag"] == "SELECT 1"


def test_transaction_api(gateway, connect, app, scratch):
    with connect() as conn:
        with conn.transaction():
            conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (1, "kept"))
            with pytest.raises(errors.UniqueViolation):
                with conn.transaction():  # a savepoint
                    conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (1, "duplicate"))
            conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (2, "kept too"))
        with conn.transaction():
            conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (3, "rolled back"))
            raise psycopg.Rollback()
        # implicit transaction (autocommit off) rolled back explicitly
        conn.execute("insert into e2e_pg3 (id, name) values (%s, %s)", (4, "rolled back too"))
        conn.rollback()
    assert scratch.execute("select id, name from e2e_pg3 order by id").fetchall() == [(1, "kept"), (2, "kept too")]
    statements = recorded(gateway, app)
    texts = [s["text"] for s in statements]
    assert texts.count("BEGIN") == 3
    assert any(t.startswith("SAVEPOINT") for t in texts) and any(t.startswith("ROLLBACK TO") for t in texts)
    assert "COMMIT" in texts and texts.count("ROLLBACK") == 2
    dup = [s for s in statements if s["parameters"] == ["\\x0001", "duplicate"]]
    assert len(dup) == 1 and dup[0]["error"]["sqlstate"] == "23505"


def test_notices_and_notifications_between_sessions(gateway, connect, app, mint):
    notices = []
    with connect(autocommit=True) as listener, connect(autocommit=True, app=app + "-n") as notifier:
        listener.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        listener.execute("DO $$ BEGIN RAISE NOTICE 'notice %', 7; END $$")
        assert notices == ["notice 7"]
        listener.execute("LISTEN e2e_pg3_channel")
        notifier.execute("select pg_notify('e2e_pg3_channel', 'from the other session')")
        got = []
        for note in listener.notifies(timeout=10, stop_after=1):
            got.append((note.channel, note.payload))
        assert got == [("e2e_pg3_channel", "from the other session")]


def test_error_does_not_end_session(gateway, connect, app):
    with connect(autocommit=True) as conn:
        with pytest.raises(errors.DivisionByZero):
            # fails at Execute (the divisor is computed then); Bind-time errors: see the next test
            conn.execute("select %s::int / (select count(*)::int from customers where id < 0)", (1,))
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        assert conn.execute("select %s::text", ("ok",)).fetchone() == ("ok",)
    statements = recorded(gateway, app)
    assert [s["error"]["sqlstate"] if s["error"] else None for s in statements] == ["22012", "42P01", None]
    assert statements[0]["parameters"] == ["\\x0001"]


def test_identifiers_and_large_result_stream(gateway, connect, app):
    with connect() as conn:
        query = sql.SQL("select g, repeat('x', 100) from generate_series(1, {}) g").format(sql.Literal(50000))
        with conn.cursor(name="big") as cur:  # a server-side cursor (DECLARE / FETCH)
            cur.itersize = 5000
            count = sum(1 for _ in cur.execute(query))
        assert count == 50000
        rows = conn.execute("select g from generate_series(1, 200000) g").fetchall()
        assert len(rows) == 200000 and rows[-1] == (200000,)
        conn.commit()
    statements = recorded(gateway, app)
    big = [s for s in statements if s["text"] == "select g from generate_series(1, 200000) g"]
    assert len(big) == 1 and big[0]["command_tag"] == "SELECT 200000" and big[0]["rows"] == 200000
    fetches = [s for s in statements if s["text"].startswith("FETCH")]
    assert sum(s["rows"] for s in fetches) == 50000
    verify_chain(gateway.store_path)


def test_bind_time_error_recorded_with_its_sqlstate(gateway, connect, app):
    """`$1::int / 0` fails while PostgreSQL plans at Bind (constant folding with the parameter
    value), before Execute: the recorded statement must still carry the error the client saw."""
    stop = threading.Event()

    def busy_writer(conn):  # keeps the store's writer busy, as other sessions would
        while not stop.is_set():
            conn.execute("select 1")

    with connect(autocommit=True) as conn, connect(autocommit=True, app=app + "-load") as load:
        thread = threading.Thread(target=busy_writer, args=(load,), daemon=True)
        thread.start()
        try:
            for _ in range(50):
                with pytest.raises(errors.DivisionByZero):
                    conn.execute("select %s::int / 0", (1,))
            assert conn.execute("select 1").fetchone() == (1,)
        finally:
            stop.set()
            thread.join(10)
    statements = recorded(gateway, app)
    assert len(statements) == 51
    wrong = [s["error"] for s in statements[:50] if (s["error"] or {}).get("sqlstate") != "22012"]
    assert not wrong, f"{len(wrong)} of 50 recorded with another error, e.g. {wrong[:2]}"
