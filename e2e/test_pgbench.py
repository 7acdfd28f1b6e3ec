"""A short, bounded pgbench run through Custos: every transaction recorded, chain intact."""

from __future__ import annotations

import os
import re
import subprocess

from custos_e2e import verify_chain, wait_until


def test_pgbench_select_only_through_custos(gateway, mint, pg, app):
    token = mint(sub="pgbench-agent", email="pgbench@example.com")
    before = verify_chain(gateway.store_path)["events"]
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "disable", "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "10"}
    result = subprocess.run(
        [pg.bin("pgbench"), "-S", "-T", "3", "-c", "4", "-j", "2", "-h", "127.0.0.1", "-p", str(gateway.port),
         "-U", "agent", "pgbench"],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    processed = int(re.search(r"number of transactions actually processed: (\d+)", result.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    assert processed > 100, result.stdout
    assert failed is None or failed.group(1) == "0", result.stdout

    def finished_sessions():
        found = [s for s in gateway.sessions("--connection", "pgbench", "--since", "5m") if s["application_name"] == app]
        return found if len(found) >= 4 and all(s["outcome"] != "open" for s in found) else None

    sessions = wait_until(finished_sessions, timeout=15, what="pgbench's sessions to be recorded closed")
    # pgbench's 4 clients (plus its set-up connection)
    assert len(sessions) >= 4, sessions
    assert all(s["outcome"] == "closed" and s["subject"] == "pgbench-agent" for s in sessions), sessions
    statements = sum(s["statement_count"] for s in sessions)
    # one SELECT per select-only transaction, plus pgbench's own set-up queries
    assert statements >= processed, (statements, processed)

    after = verify_chain(gateway.store_path)["events"]
    # each statement is a statement event and a result event
    assert after - before >= 2 * processed
