"""The statement policy, end to end with psycopg: denials in both protocols, inside a transaction
(25P02 until the block ends; COMMIT becomes ROLLBACK), review, multi-statement strings, flagged
SQL, rate limits — each decision recorded with its rule and the policy version."""

from __future__ import annotations

import re

import psycopg
import pytest

STRICT = {"policy": {"rules": [
    {"name": "deny-flagged", "match": {"flags": ["destructive", "privileged", "opaque", "unparseable"]},
     "action": "deny", "message": "destructive, privileged and opaque SQL is not allowed through Custos"},
    {"name": "agents-read", "match": {"groups": ["agents"], "read_only": True}, "action": "allow"},
    {"name": "agents-tx", "match": {"groups": ["agents"], "kinds": ["begin", "commit", "rollback", "savepoint", "rollback_to", "release", "set", "show", "deallocate", "discard"]},
     "action": "allow"},
    {"name": "agents-log", "match": {"groups": ["agents"], "kinds": ["insert"], "tables": ["events_log"]}, "action": "allow"},
    {"name": "agents-write", "match": {"groups": ["agents"], "kinds": ["insert", "update", "delete", "merge"]},
     "action": "review", "message": "writes need an approval"},
]}}


@pytest.fixture
def strict(start_gateway):
    return start_gateway(STRICT)


def statements_of(gw, app):
    return gw.show(gw.session_by_app(app)["id"])["statements"]


def count_log(direct, marker):
    return direct().execute("SELECT count(*) FROM events_log WHERE message = %s", (marker,)).fetchone()[0]


def test_denial_in_simple_protocol_session_goes_on(strict, mint, direct, app):
    with psycopg.connect(strict.dsn(mint(), app=app), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            conn.execute("DROP TABLE customers")
        assert "not allowed through Custos" in str(denied.value)
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] > 0
    assert direct().execute("SELECT to_regclass('public.customers') IS NOT NULL").fetchone() == (True,)
    recorded = statements_of(strict, app)
    assert [(s["text"], s["decision"], s["rule"]) for s in recorded][:2] == [
        ("DROP TABLE customers", "deny", "deny-flagged"), ("SELECT count(*) FROM customers", "allow", "agents-read")]
    assert re.fullmatch(r"[0-9a-f]{64}", recorded[0]["policy"]), recorded[0]


def test_denial_in_extended_protocol(strict, mint, app):
    with psycopg.connect(strict.dsn(mint(), app=app), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as review:
            conn.execute("UPDATE customers SET phone = %s WHERE id = %s", ("x", 1))
        assert "writes need an approval" in str(review.value)
        assert conn.execute("SELECT id FROM customers WHERE id = %s", (2,), prepare=True).fetchone() == (2,)
    recorded = statements_of(strict, app)
    assert recorded[0]["decision"] == "review" and recorded[0]["rule"] == "agents-write"
    assert recorded[0]["parameters"] == ["x", "\\x0001"]  # psycopg sends the int in binary (int2)


def test_denial_inside_a_transaction_fails_the_block_until_rollback(strict, mint, direct, app):
    marker = f"policy-rollback-{app}"
    with psycopg.connect(strict.dsn(mint(), app=app)) as conn:
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM customers")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 2", prepare=False)
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 3").fetchone() == (3,)
    assert count_log(direct, marker) == 0


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_commit_of_a_failed_block_rolls_back(strict, mint, direct, app, prepare):
    marker = f"policy-commit-{prepare}-{app}"
    conn = psycopg.connect(strict.dsn(mint(), app=app))
    try:
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE events_log")
        cur = conn.cursor()
        cur.execute("COMMIT", prepare=prepare)   # extended: Parse/Bind/Execute/Sync, sent on as a simple ROLLBACK
        assert cur.statusmessage == "ROLLBACK"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
    assert count_log(direct, marker) == 0, "the transaction must have been rolled back"


def test_savepoint_recovers_the_block(strict, mint, direct, app):
    marker = f"policy-savepoint-{app}"
    with psycopg.connect(strict.dsn(mint(), app=app)) as conn:
        conn.execute("SAVEPOINT before_risk")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE orders")
        conn.execute("ROLLBACK TO SAVEPOINT before_risk")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
        conn.commit()
    assert count_log(direct, marker) == 1


def test_multi_statement_string_takes_the_strictest_decision(strict, mint, direct, app):
    marker = f"policy-multi-{app}"
    with psycopg.connect(strict.dsn(mint(), app=app), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', '{marker}'); DROP TABLE orders")
    assert count_log(direct, marker) == 0, "no part of a denied string may run"


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN PERFORM 1; END $$",
    "SELECT pg_terminate_backend(1)",
    "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "COPY customers TO PROGRAM 'cat'",
    "SELEKT * FROM customers",
])
def test_hidden_and_flagged_sql_is_denied(strict, mint, direct, sql):
    before = direct().execute("SELECT count(*) FROM orders").fetchone()[0]
    with psycopg.connect(strict.dsn(mint()), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql)
    assert direct().execute("SELECT count(*) FROM orders").fetchone()[0] == before


def test_rate_limit(start_gateway, mint, app):
    gw = start_gateway({"policy": {"rules": [
        {"name": "slow-reads", "match": {"groups": ["agents"], "read_only": True}, "action": "allow", "limits": {"rate": 2}},
    ]}})
    limited = 0
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        for _ in range(10):
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as error:
                assert error.sqlstate == "53400", error
                limited += 1
    assert 5 <= limited <= 9


def test_reload_on_sighup_under_live_sessions(start_gateway, mint, app):
    import copy
    import signal
    import time

    gw = start_gateway(STRICT)
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # A broken policy is refused; the old one stays in force.
        broken = copy.deepcopy(gw.config)
        broken["policy"]["rules"][0]["action"] = "maybe"
        gw.config_path.write_text(__import__("yaml").safe_dump(broken, sort_keys=False))
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "policy reload refused" not in gw.log() and time.time() < deadline:
            time.sleep(0.05)
        assert "policy reload refused" in gw.log()
        assert "policy.rules[0].action" in gw.log()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        # A valid new policy takes effect in the same, still open session.
        stricter = copy.deepcopy(gw.config)
        stricter["policy"]["rules"] = [r for r in stricter["policy"]["rules"] if r["name"] != "agents-read"]
        gw.config_path.write_text(__import__("yaml").safe_dump(stricter, sort_keys=False))
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "policy reloaded" not in gw.log() and time.time() < deadline:
            time.sleep(0.05)
        assert "policy reloaded" in gw.log()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 3")
    recorded = statements_of(gw, app)
    assert recorded[0]["policy"] != recorded[-1]["policy"], "decisions record the policy version in force"
    assert recorded[-1]["rule"] == "default"


def run_check(gw, *args):
    import json
    import subprocess

    from custos_e2e import custos_bin

    done = subprocess.run([str(custos_bin()), "policy", "check", "--config", str(gw.config_path), *args],
                          capture_output=True, text=True, timeout=30)
    return done.returncode, (json.loads(done.stdout) if done.returncode == 0 and "--json" in args else done.stdout), done.stderr


def test_policy_check_answers_from_the_config_alone(launcher):
    gw = launcher.prepare(STRICT)   # written, never started: nothing is contacted
    gw.write_config()
    rc, out, _ = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb",
                           "--sql", "SELECT * FROM customers; DELETE FROM orders WHERE id = 1", "--json")
    assert rc == 0
    assert out["decision"] == "review" and out["rule"] == "agents-write"
    assert [s["decision"] for s in out["statements"]] == ["allow", "review"]
    assert out["statements"][0]["tables_read"] == ["customers"]
    assert out["statements"][1]["tables_written"] == ["orders"]
    rc, out, _ = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb",
                           "--sql", "WITH x AS (DELETE FROM orders RETURNING 1) SELECT * FROM x", "--json")
    assert (rc, out["decision"], out["rule"]) == (0, "deny", "deny-flagged")
    assert "destructive" in out["statements"][0]["flags"]
    rc, _, err = run_check(gw, "--sub", "a", "--connection", "nope", "--sql", "SELECT 1")
    assert rc == 2 and "unknown connection" in err


LIMITED = {"policy": {"rules": [
    {"name": "limited-reads", "match": {"groups": ["agents"], "read_only": True}, "action": "allow",
     "limits": {"max_rows": 10, "statement_timeout": "1s"}},
    {"name": "agents-tx", "match": {"groups": ["agents"], "kinds": ["begin", "commit", "rollback"]}, "action": "allow"},
]}}


def test_max_rows_ends_the_statement_with_54000(start_gateway, mint, app):
    gw = start_gateway(LIMITED)
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        assert len(conn.execute("SELECT g FROM generate_series(1, 10) g").fetchall()) == 10
        for prepare in (False, True):
            with pytest.raises(psycopg.Error) as over:
                conn.execute("SELECT g FROM generate_series(1, %s) g", (100000,), prepare=prepare)
            assert over.value.sqlstate == "54000", over.value
            assert "more than 10 rows" in str(over.value)
        with pytest.raises(psycopg.Error) as simple:
            conn.execute("SELECT g FROM generate_series(1, 50) g")
        assert simple.value.sqlstate == "54000"
        assert conn.execute("SELECT 1").fetchone() == (1,)
    recorded = statements_of(gw, app)
    assert recorded[1]["error"]["sqlstate"] == "54000"
    assert recorded[1]["command_tag"] is None


def test_max_rows_inside_a_transaction_fails_the_block(start_gateway, mint, app):
    gw = start_gateway(LIMITED)
    with psycopg.connect(gw.dsn(mint(), app=app)) as conn:
        with pytest.raises(psycopg.Error) as over:
            conn.execute("SELECT g FROM generate_series(1, 11) g")
        assert over.value.sqlstate == "54000"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_gateways_own_cancel_never_hits_the_next_statement(start_gateway, mint, app):
    # The row limit cancels at the backend a statement that has usually finished already; were that
    # cancel still on its way, PostgreSQL would apply it to the client's next statement (here one
    # that runs 50 ms, much longer than a cancel takes to arrive).
    gw = start_gateway(LIMITED)
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        for _ in range(5):
            with pytest.raises(psycopg.Error) as over:
                conn.execute("SELECT g FROM generate_series(1, 11) g")
            assert over.value.sqlstate == "54000"
            assert conn.execute("SELECT 7 FROM pg_sleep(0.05)").fetchone() == (7,)


def test_statement_timeout_cancels_with_57014(start_gateway, mint, app):
    import time

    gw = start_gateway(LIMITED)
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert "statement timeout" in str(cancelled.value)
        assert conn.execute("SELECT 2").fetchone() == (2,)
    recorded = statements_of(gw, app)
    assert recorded[0]["error"]["sqlstate"] == "57014"


def test_sql_prepare_execute_is_decided_as_what_was_prepared(start_gateway, mint, direct, app):
    policy = {"policy": {"rules": [
        STRICT["policy"]["rules"][0],
        {"name": "agents-prepare", "match": {"groups": ["agents"], "kinds": ["prepare", "deallocate"]}, "action": "allow"},
        *STRICT["policy"]["rules"][1:],
    ]}}
    gw = start_gateway(policy)
    marker = f"policy-prepare-{app}"
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        conn.execute("PREPARE one_customer AS SELECT id FROM customers WHERE id = $1")
        assert conn.execute("EXECUTE one_customer(7)").fetchone() == (7,)
        conn.execute("PREPARE log_it AS INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', $1)")
        conn.execute(f"EXECUTE log_it('{marker}')")          # an insert into events_log: allowed
        conn.execute("PREPARE wipe AS DELETE FROM orders WHERE id = $1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as review:
            conn.execute("EXECUTE wipe(1)")                   # a delete: review
        assert "writes need an approval" in str(review.value)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("EXECUTE never_prepared(1)")         # unknown: opaque, denied
        conn.execute("DEALLOCATE one_customer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("EXECUTE one_customer(7)")           # forgotten after DEALLOCATE
    assert count_log(direct, marker) == 1
    rules = [(s["text"], s["rule"]) for s in statements_of(gw, app)]
    assert ("EXECUTE one_customer(7)", "agents-read") in rules
    assert ("EXECUTE wipe(1)", "agents-write") in rules
    assert rules[-1] == ("EXECUTE one_customer(7)", "deny-flagged")

