"""psql through Custos: queries, transactions, COPY, notices, notifications, errors — and what
the recording says about each."""

from __future__ import annotations

import re

from custos_e2e import verify_chain, verify_shown_events


def statements_of(gateway, app):
    session = gateway.session_by_app(app)
    shown = gateway.show(session["id"])
    verify_shown_events(shown)
    return session, shown, shown["statements"]


def test_simple_queries_and_session_record(gateway, mint, app):
    token = mint(sub="psql-simple", email="psql-simple@example.com", groups=["agents", "readers"])
    result = gateway.psql(token, "-A", "-t", "-c", "select count(*) from customers",
                          "-c", "select full_name from customers where id = 1",
                          "-c", "select current_user, current_database()", app=app)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "200"
    assert lines[1] == "Liam Miller"  # deterministic sample data (scripts/sql/appdb.sql)
    # the gateway-held credential, not the agent's startup user
    assert lines[2] == "custos_scram|appdb"

    session, shown, statements = statements_of(gateway, app)
    assert session["outcome"] == "closed"
    assert session["subject"] == "psql-simple"
    assert session["email"] == "psql-simple@example.com"
    assert session["groups"] == ["agents", "readers"]
    assert session["issuer"] == gateway.config["identity"]["issuers"][0]["issuer"]
    assert session["connection"] == "appdb" and session["database"] == "appdb"
    assert session["startup_user"] == "agent"
    assert session["application_name"] == app
    assert re.fullmatch(r"127\.0\.0\.1:\d+", session["client_address"])
    assert session["ended_at"] and session["started_at"] <= session["ended_at"]
    assert session["statement_count"] == 3
    assert [s["text"] for s in statements] == [
        "select count(*) from customers",
        "select full_name from customers where id = 1",
        "select current_user, current_database()",
    ]
    for number, s in enumerate(statements, 1):
        assert s["seq"] == number
        assert s["protocol"] == "simple"
        assert s["decision"] == "allow"
        assert s["command_tag"] == "SELECT 1"
        assert s["rows"] == 1
        assert s["error"] is None
        assert s["parameters"] == []
        assert isinstance(s["duration_us"], int) and s["duration_us"] >= 0
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[0] == "session.open" and kinds[-1] == "session.close"
    assert kinds.count("statement") == 3 and kinds.count("result") == 3
    verify_chain(gateway.store_path)


def test_transaction_rollback_and_commit(gateway, token, app, direct):
    db = direct()
    db.execute("drop table if exists e2e_psql_tx")
    db.execute("create table e2e_psql_tx (id int primary key, note text)")
    try:
        script = """
BEGIN;
INSERT INTO e2e_psql_tx VALUES (1, 'rolled back');
ROLLBACK;
BEGIN;
INSERT INTO e2e_psql_tx VALUES (2, 'committed');
INSERT INTO e2e_psql_tx VALUES (3, 'committed too');
COMMIT;
"""
        result = gateway.psql(token, "-f", "-", stdin=script, app=app)
        assert result.returncode == 0, result.stderr
        rows = db.execute("select id, note from e2e_psql_tx order by id").fetchall()
        assert rows == [(2, "committed"), (3, "committed too")]

        _, _, statements = statements_of(gateway, app)
        assert [(s["text"], s["command_tag"]) for s in statements] == [
            ("BEGIN;", "BEGIN"),
            ("INSERT INTO e2e_psql_tx VALUES (1, 'rolled back');", "INSERT 0 1"),
            ("ROLLBACK;", "ROLLBACK"),
            ("BEGIN;", "BEGIN"),
            ("INSERT INTO e2e_psql_tx VALUES (2, 'committed');", "INSERT 0 1"),
            ("INSERT INTO e2e_psql_tx VALUES (3, 'committed too');", "INSERT 0 1"),
            ("COMMIT;", "COMMIT"),
        ]
        assert all(s["decision"] == "allow" and s["error"] is None for s in statements)
        assert [s["rows"] for s in statements if s["text"].startswith("INSERT")] == [1, 1, 1]
    finally:
        db.execute("drop table if exists e2e_psql_tx")


def test_multi_statement_string_is_one_statement(gateway, token, app, direct):
    db = direct()
    db.execute("drop table if exists e2e_psql_multi")
    try:
        text = "create table e2e_psql_multi (n int); insert into e2e_psql_multi values (1), (2); select sum(n) from e2e_psql_multi"
        result = gateway.psql(token, "-A", "-t", "-c", text, app=app)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 2", "3"]
        assert db.execute("select count(*) from e2e_psql_multi").fetchone()[0] == 2

        session, _, statements = statements_of(gateway, app)
        assert session["statement_count"] == 1
        assert len(statements) == 1
        assert statements[0]["text"] == text
        assert statements[0]["decision"] == "allow"
        assert statements[0]["error"] is None
        assert statements[0]["command_tag"] is not None
    finally:
        db.execute("drop table if exists e2e_psql_multi")


def test_copy_from_stdin_and_to_stdout(gateway, token, app, direct, tmp_path):
    db = direct()
    db.execute("delete from events_log where source = 'e2e-psql-copy'")
    before = db.execute("select count(*) from events_log").fetchone()[0]
    source = tmp_path / "in.csv"
    source.write_text("e2e-psql-copy,info,first line\n"
                      "e2e-psql-copy,warn,\"second, with comma\"\n"
                      "e2e-psql-copy,error,third\n")
    out = tmp_path / "out.csv"
    result = gateway.psql(
        token,
        "-c", f"\\copy events_log (source, level, message) from '{source}' with (format csv)",
        "-c", f"\\copy (select id, source, message from events_log where id <= 3 order by id) to '{out}' with (format csv)",
        app=app)
    assert result.returncode == 0, result.stderr
    assert "COPY 3" in result.stdout
    rows = db.execute("select level, message from events_log where source = 'e2e-psql-copy' order by id").fetchall()
    assert rows == [("info", "first line"), ("warn", "second, with comma"), ("error", "third")]
    assert db.execute("select count(*) from events_log").fetchone()[0] == before + 3
    assert out.read_text().splitlines() == [
        "1,auth,sample event 1", "2,shipping,sample event 2", "3,billing,sample event 3"]

    _, _, statements = statements_of(gateway, app)
    assert len(statements) == 2
    copy_in, copy_out = statements
    # psql rewrites \copy into the COPY it sends: "COPY  events_log ( source, level, message ) FROM STDIN ..."
    assert re.fullmatch(r"COPY\s+events_log \( ?source, level, message ?\) FROM STDIN with \(format csv\)",
                        copy_in["text"]), copy_in["text"]
    assert copy_in["command_tag"] == "COPY 3" and copy_in["rows"] == 3 and copy_in["error"] is None
    assert "TO STDOUT" in copy_out["text"]
    assert copy_out["command_tag"] == "COPY 3" and copy_out["rows"] == 3 and copy_out["error"] is None
    db.execute("delete from events_log where source = 'e2e-psql-copy'")


def test_notice_and_notification_are_delivered(gateway, token, app):
    script = """
DO $$ BEGIN RAISE NOTICE 'hello from a DO block'; END $$;
LISTEN e2e_channel;
NOTIFY e2e_channel, 'payload-42';
SELECT 'after notify';
"""
    result = gateway.psql(token, "-f", "-", stdin=script, app=app)
    assert result.returncode == 0, result.stderr
    assert "NOTICE:  hello from a DO block" in result.stderr
    assert re.search(r'Asynchronous notification "e2e_channel" with payload "payload-42" received from server process with PID \d+',
                     result.stdout), result.stdout
    assert "after notify" in result.stdout
    _, _, statements = statements_of(gateway, app)
    assert [s["command_tag"] for s in statements] == ["DO", "LISTEN", "NOTIFY", "SELECT 1"]


def test_error_then_session_continues(gateway, token, app):
    result = gateway.psql(token, "-A", "-t", "-c", "select 1/0", "-c", "select 'still here'", app=app)
    assert "division by zero" in result.stderr
    assert result.stdout.strip() == "still here"
    session, _, statements = statements_of(gateway, app)
    assert session["outcome"] == "closed"
    assert statements[0]["text"] == "select 1/0"
    assert statements[0]["error"] == {"sqlstate": "22012", "message": "division by zero"}
    assert statements[0]["command_tag"] is None
    assert statements[1]["error"] is None and statements[1]["command_tag"] == "SELECT 1"


def test_psql_sslmode_prefer_falls_back_to_cleartext_on_loopback(gateway, token, app):
    # No listen.tls: SSLRequest is answered 'N' and psql continues without TLS on loopback.
    result = gateway.psql(token, "-A", "-t", "-c", "select 42", sslmode="prefer", app=app)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
