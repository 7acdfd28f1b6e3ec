"""Faults at the backend: PostgreSQL restarted under an open session. The client gets a clean
error (an ErrorResponse with a SQLSTATE, then the connection closes), the gateway keeps running, the
session's end is recorded, new sessions work once PostgreSQL is back, and the chain verifies.

The restarted server is a private cluster (scripts/lib/common.sh pg_start in a temporary folder),
so the suite's shared PostgreSQL is never disturbed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from custos_e2e import ROOT, free_port, verify_chain, wait_until

COMMON_SH = ROOT / "scripts" / "lib" / "common.sh"


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory):
    rundir = tmp_path_factory.mktemp("faults-pg")
    port = free_port()
    env = {**os.environ, "CUSTOS_PG_SSL": "0"}
    subprocess.run(["bash", "-c", f'. "{COMMON_SH}" && pg_start "$0" "$1"', str(rundir), str(port)],
                   check=True, env=env, capture_output=True, text=True, timeout=180)
    values = dict(line.split("=", 1) for line in (rundir / "pg.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    yield {"port": port, "data": values["CUSTOS_PG_DATA"], "bindir": values["CUSTOS_PG_BINDIR"], "secrets": Path(values["CUSTOS_PG_SECRETS"]),
           "log": f"{values['CUSTOS_PG_BASE']}/postgres.log"}
    subprocess.run(["bash", "-c", f'. "{COMMON_SH}" && pg_stop "$0"', str(rundir)], env=env, capture_output=True, timeout=120)


def pg_ctl(pg: dict, *args: str) -> None:
    command = [f"{pg['bindir']}/pg_ctl", "-D", pg["data"], *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # The server's output goes to its log: a pipe would be held open by the restarted server.
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def test_backend_restart_mid_session(private_pg, start_gateway, mint, app):
    secrets = private_pg["secrets"]
    gw = start_gateway({"connections": {"restartable": {
        "host": "127.0.0.1", "port": private_pg["port"], "database": "appdb", "user": "custos_scram",
        "password_file": str(secrets / "scram.pw"), "sslmode": "disable", "allow_groups": ["agents"]}}})
    token = mint()
    conn = psycopg.connect(gw.dsn(token, dbname="restartable", app=app), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)

    pg_ctl(private_pg, "restart", "-m", "fast", "-w", "-l", private_pg["log"])

    # The open session gets a clean error, not a hang: PostgreSQL's FATAL (admin shutdown), or the
    # gateway's own error for a backend connection that went away.
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as failed:
        conn.execute("SELECT 2")
    assert time.monotonic() - started < 10
    assert failed.value.sqlstate in ("57P01", "08006", None), failed.value
    conn.close()
    assert gw.alive()

    # New sessions work once PostgreSQL is back.
    with psycopg.connect(gw.dsn(token, dbname="restartable", app=app + "-after"), autocommit=True) as again:
        assert again.execute("SELECT 3").fetchone() == (3,)

    session = gw.session_by_app(app)
    assert session["outcome"] in ("error", "closed"), session
    wait_until(lambda: gw.session_by_app(app + "-after")["outcome"] == "closed", 10, what="the second session's close")
    assert verify_chain(gw.store_path)["events"] > 0
    verify = gw.cli("verify", "--json", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
