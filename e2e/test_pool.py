"""Backend pooling (connections.NAME.pool): a session that ends at rest leaves its backend
connection to the next session with the same startup parameters, reset with DISCARD ALL.

Each test runs its own gateway with a pooled `appdb`; sessions are told apart by their
application_name, which is also part of the pool's key. The backend a session ran on is read from
the record (session.open's backend.pid) and from PostgreSQL (pg_stat_activity), not from the
gateway's word alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import psycopg
import pytest

from custos_e2e import WireClient, errors_in, read_events, verify_chain, wait_until
from test_prepared_names import bind, execute, parse


def pooled(size: int = 2, idle_timeout: str = "60s") -> dict:
    return {"connections": {"appdb": {"pool": {"size": size, "idle_timeout": idle_timeout}},
                            "pgbench": {"pool": {"size": size, "idle_timeout": idle_timeout}}}}


def backends(direct, app: str) -> dict[int, dict]:
    """The gateway's backend connections for `app`, by pid, as PostgreSQL sees them."""
    rows = direct().execute(
        "SELECT pid, state, query FROM pg_stat_activity WHERE usename = 'custos_scram' AND application_name = %s",
        (app,)).fetchall()
    return {pid: {"state": state, "query": query} for pid, state, query in rows}


def wait_pooled(direct, app: str, pid: int) -> None:
    """Waits until `pid` has been reset (its last query DISCARD ALL) and sits idle in the pool."""
    wait_until(lambda: backends(direct, app).get(pid, {}) == {"state": "idle", "query": "DISCARD ALL"},
               10, 0.05, what=f"backend {pid} reset into the pool")


def open_events(store, app: str) -> list[dict]:
    found = []
    for event in read_events(store):
        if event["kind"] == "session.open":
            payload = json.loads(event["payload"])
            if payload["client"].get("application_name") == app:
                found.append(payload)
    return found


def assert_fresh(conn: psycopg.Connection, direct) -> None:
    """Nothing of an earlier session on the same backend shows."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"
    assert conn.execute("SELECT to_regclass('pg_temp.left_behind_t')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0] == 0
    locks = direct().execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)).fetchone()[0]
    assert locks == 0, "an advisory lock outlived its session"
    with pytest.raises(psycopg.Error) as gone:
        conn.execute("EXECUTE left_behind")
    assert gone.value.sqlstate == "26000", gone.value
    # The client sees what a fresh backend reports, e.g. its parameters.
    assert conn.info.parameter_status("application_name") == conn.execute("SHOW application_name").fetchone()[0]
    assert conn.info.parameter_status("server_version")


def test_released_backend_is_reused_with_its_state_reset(start_gateway, mint, direct, app):
    gw = start_gateway(pooled())
    token = mint()
    with psycopg.connect(gw.dsn(token, app=app), autocommit=True) as first:
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
        first.execute("SET statement_timeout = '4321ms'")
        first.execute("PREPARE left_behind AS SELECT 42")
        first.execute("CREATE TEMP TABLE left_behind_t (x int)")
        first.execute("SELECT pg_advisory_lock(4242)")
        first.execute("LISTEN left_behind_channel")
        old_cancel = first.pgconn.get_cancel()  # the first session's cancel key, kept past its end
    wait_pooled(direct, app, pid)

    # The gateway's event loops take new connections in turn, and a backend serves sessions on its
    # own loop: within a few sessions one lands on it. Every one of them starts clean.
    second = None
    for _ in range(6):
        conn = psycopg.connect(gw.dsn(token, app=app), autocommit=True)
        assert_fresh(conn, direct)
        if conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid:
            second = conn
            break
        conn.close()
    assert second is not None, "the pooled backend was never reused"
    with second:
        # The first session's cancel key died with it: it cannot reach the new session's query.
        old_cancel.cancel()
        assert second.execute("SELECT 7 FROM pg_sleep(0.3)").fetchone() == (7,)
        # The new session's own key cancels.
        timer = threading.Timer(0.3, second.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            second.execute("SELECT pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10
        assert second.execute("SELECT 1").fetchone() == (1,)

    opens = open_events(gw.store_path, app)
    assert opens[0]["backend"] == {"pid": pid, "reused": False}
    assert opens[-1]["backend"] == {"pid": pid, "reused": True}
    assert all(o["backend"]["pid"] != pid for o in opens[1:-1])  # sessions on the other loop(s)
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    verify = gw.cli("verify", "--json", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Stopping the gateway ends its pooled connections.
    wait_until(lambda: not backends(direct, app), 10, what="pooled backends closed at shutdown")


def test_extended_exchange_left_open_is_ended_before_reuse(start_gateway, mint, direct, app):
    """A client that ends after Parse/Bind/Execute and a Flush, without Sync, leaves the backend
    inside an implicit transaction: the reset's Sync ends it, so the next session starts clean."""
    gw = start_gateway(pooled())
    token = mint()
    with WireClient(gw.port) as wire:
        assert not errors_in(wire.login(token, app=app))
        for type_, body in (parse("left_open", "SELECT pg_backend_pid()"), bind("", "left_open"), execute(), (b"H", b"")):
            wire.send(type_, body)
        answers = wire.recv_until([b"C"])
        assert [t for t, _ in answers] == [b"1", b"2", b"D", b"C"], answers
        pid = int(answers[2][1][6:].decode())  # DataRow: 1 column, its length, the text
        wire.send(b"X")
    wait_pooled(direct, app, pid)
    for _ in range(6):
        with psycopg.connect(gw.dsn(token, app=app), autocommit=True) as conn:
            if conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid:
                continue
            assert conn.execute("SELECT now() = statement_timestamp()").fetchone() == (True,), "still in the old transaction"
            with pytest.raises(psycopg.Error) as gone:
                conn.execute("EXECUTE left_open")
            assert gone.value.sqlstate == "26000"
            break
    else:
        pytest.fail("the pooled backend was never reused")


def test_pool_key_size_and_what_is_not_pooled(start_gateway, mint, direct, app):
    gw = start_gateway(pooled(size=2, idle_timeout="3s"))
    token = mint()
    other = app + "-other"

    # A session ending inside a transaction block: its backend is closed, not pooled.
    with psycopg.connect(gw.dsn(token, app=app)) as in_tx:  # psycopg opens a transaction
        busy_pid = in_tx.execute("SELECT pg_backend_pid()").fetchone()[0]
    wait_until(lambda: busy_pid not in backends(direct, app), 10, what="the backend left in a transaction closed")

    # A client that just goes away (no Terminate) at rest: its backend is pooled too.
    with WireClient(gw.port) as wire:
        assert not errors_in(wire.login(token, app=app))
        wire.query("SELECT pg_backend_pid()")
        answers = wire.recv_until([b"Z"])
        pid = int([body for t, body in answers if t == b"D"][0][6:].decode())
        address = wire.local_address
    wait_pooled(direct, app, pid)
    gone = gw.session_by_client(address)
    assert (gone["outcome"], gone["reason"]) == ("error", "client disconnected"), gone  # recorded as before
    # Other startup parameters (here application_name) do not share it.
    with psycopg.connect(gw.dsn(token, app=other), autocommit=True) as stranger:
        assert stranger.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        assert stranger.execute("SELECT current_setting('application_name')").fetchone()[0] == other

    # Three sessions at once, all ending at rest: the pool keeps two (its size, over both apps).
    conns = [psycopg.connect(gw.dsn(token, app=app), autocommit=True) for _ in range(3)]
    assert len({c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}) == 3
    for c in conns:
        c.close()
    wait_until(lambda: len(backends(direct, app)) + len(backends(direct, other)) == 2, 10,
               what="the pool trimmed to its size")
    # Unused for idle_timeout, they are closed.
    wait_until(lambda: not backends(direct, app) and not backends(direct, other), 15, 0.2,
               what="idle pooled backends closed after idle_timeout")


def test_pgbench_connect_per_transaction_through_the_pool(start_gateway, mint, pg, direct, app):
    gw = start_gateway(pooled(size=4))
    env = {**os.environ, "PGPASSWORD": mint(sub="pgbench-agent"), "PGSSLMODE": "disable", "PGAPPNAME": app,
           "PGCONNECT_TIMEOUT": "10"}
    for mode in ("simple", "prepared"):
        result = subprocess.run(
            [pg.bin("pgbench"), "-C", "-S", "-M", mode, "-t", "50", "-c", "4", "-j", "2", "-h", "127.0.0.1",
             "-p", str(gw.port), "-U", "agent", "pgbench"],
            capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"number of transactions actually processed: 200/200", result.stdout), result.stdout
        assert re.search(r"number of failed transactions: 0 ", result.stdout), result.stdout
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    opens = open_events(gw.store_path, app)
    assert len(opens) >= 400
    reused = sum(1 for o in opens if o["backend"]["reused"])
    pids = {o["backend"]["pid"] for o in opens}
    # Connect per transaction, yet a handful of backends served them all.
    assert reused >= 400 - 20, f"{reused} of {len(opens)} sessions reused a backend"
    assert len(pids) <= 20, pids
    sessions = [s for s in gw.sessions("--connection", "pgbench") if s["application_name"] == app]
    assert len(sessions) == len(opens) and all(s["outcome"] == "closed" for s in sessions)
    assert verify_chain(gw.store_path)["events"] > 0
