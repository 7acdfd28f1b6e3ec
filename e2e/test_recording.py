"""The recording as the CLI shows it: list filters, show (JSON and transcript), event order,
and the whole store's hash chain."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from custos_e2e import GENESIS, canonical_json, event_hash, read_events, sha256_hex, verify_chain, verify_shown_events


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def two_sessions(gateway, mint):
    """One session on appdb and one on pgbench, each by its own identity."""
    ids = {}
    for who, conn_name in (("rec-appdb", "appdb"), ("rec-pgbench", "pgbench")):
        token = mint(sub=f"{who}-sub", email=f"{who}@example.com", groups=["agents"])
        app = f"e2e-{who}"
        with psycopg.connect(gateway.dsn(token, dbname=conn_name, app=app), autocommit=True) as conn:
            conn.execute("select %s::text", ("hello",))
            conn.execute("select 1")
        ids[conn_name] = gateway.session_by_app(app)["id"]
    return ids


def test_list_filters_by_identity_connection_and_time(gateway, two_sessions):
    by_email = gateway.sessions("--identity", "rec-appdb@example.com")
    assert [s["id"] for s in by_email] == [two_sessions["appdb"]]
    by_subject = gateway.sessions("--identity", "rec-pgbench-sub")
    assert [s["id"] for s in by_subject] == [two_sessions["pgbench"]]

    appdb = gateway.sessions("--identity", "rec-appdb@example.com", "--connection", "appdb", "--since", "10m")
    assert [s["id"] for s in appdb] == [two_sessions["appdb"]]
    assert gateway.sessions("--identity", "rec-appdb@example.com", "--connection", "pgbench") == []

    pgbench = gateway.sessions("--connection", "pgbench")
    assert two_sessions["pgbench"] in [s["id"] for s in pgbench]
    assert all(s["connection"] == "pgbench" for s in pgbench)

    # --until in the past excludes them; --since in the future too; a window around now includes
    assert gateway.sessions("--identity", "rec-appdb@example.com", "--until", "1h") == []
    past = rfc3339(datetime.now(timezone.utc) - timedelta(hours=1))
    future = rfc3339(datetime.now(timezone.utc) + timedelta(hours=1))
    assert gateway.sessions("--identity", "rec-appdb@example.com", "--until", past) == []
    assert gateway.sessions("--identity", "rec-appdb@example.com", "--since", future) == []
    window = gateway.sessions("--identity", "rec-appdb@example.com", "--since", past, "--until", future)
    assert [s["id"] for s in window] == [two_sessions["appdb"]]
    assert gateway.sessions("--identity", "nobody@example.com") == []


def test_list_is_newest_first_and_shaped(gateway, two_sessions):
    sessions = gateway.sessions()
    assert len(sessions) >= 2
    started = [s["started_at"] for s in sessions]
    assert started == sorted(started, reverse=True)
    keys = {"id", "connection", "database", "startup_user", "subject", "email", "issuer", "groups", "client_address",
            "application_name", "started_at", "ended_at", "outcome", "reason", "sqlstate", "statement_count"}
    for s in sessions:
        assert keys <= set(s), keys - set(s)
        assert s["outcome"] in ("open", "closed", "refused", "error")


def test_show_json_lists_statements_and_events(gateway, two_sessions, issuer):
    shown = gateway.show(two_sessions["appdb"])
    verify_shown_events(shown)
    assert shown["subject"] == "rec-appdb-sub" and shown["email"] == "rec-appdb@example.com"
    assert shown["groups"] == ["agents"] and shown["issuer"] == issuer.url
    assert shown["startup_user"] == "agent" and shown["application_name"] == "e2e-rec-appdb"
    assert shown["outcome"] == "closed" and shown["statement_count"] == 2
    first, second = shown["statements"]
    assert (first["seq"], first["protocol"], first["text"], first["parameters"]) == (1, "extended", "select $1::text", ["hello"])
    assert (second["seq"], second["protocol"], second["text"], second["parameters"]) == (2, "simple", "select 1", [])
    for s in (first, second):
        assert s["decision"] == "allow" and s["command_tag"] == "SELECT 1" and s["rows"] == 1 and s["error"] is None
        assert {"rule", "policy", "duration_us", "at"} <= set(s)

    events = shown["events"]
    kinds = [e["kind"] for e in events]
    assert kinds == ["session.open", "statement", "result", "statement", "result", "session.close"]
    # one writer here, consecutive sequence numbers, each linked to the one before
    assert len({e["writer_id"] for e in events}) == 1
    # (other sessions' events may interleave in the same writer's chain)
    assert all(a["seq"] < b["seq"] for a, b in zip(events, events[1:]))
    # write-ahead: each statement event is committed before its result
    assert events[1]["at"] <= events[2]["at"] and events[3]["at"] <= events[4]["at"]
    assert events[1]["payload"]["text"] == "select $1::text"
    assert events[0]["payload"]["identity"]["subject"] == "rec-appdb-sub"


def test_show_transcript_text(gateway, two_sessions):
    out = gateway.cli("sessions", "show", two_sessions["appdb"]).stdout
    assert two_sessions["appdb"] in out
    assert "rec-appdb-sub" in out and "rec-appdb@example.com" in out
    assert "select $1::text" in out and "'hello'" in out
    assert "SELECT 1" in out
    # a unique prefix works too
    assert gateway.cli("sessions", "show", two_sessions["appdb"][:13]).stdout == out


def test_show_unknown_session_fails(gateway, two_sessions):
    result = gateway.cli("sessions", "show", "00000000-0000-0000-0000-000000000000", "--json", check=False)
    assert result.returncode != 0
    assert "no session" in result.stderr


def test_whole_store_chain_verifies_and_detects_tampering(gateway, two_sessions, tmp_path):
    summary = verify_chain(gateway.store_path)
    assert summary["events"] > 0
    # every writer's chain starts at the genesis hash
    events = read_events(gateway.store_path)
    for writer in summary["writers"]:
        first = next(e for e in events if e["writer_id"] == writer)
        assert first["seq"] == 1 and first["prev_hash"] == GENESIS

    # The verifier itself must catch a changed payload, a changed header field and a gap.
    for name, sql in (
        ("payload", "UPDATE events SET payload = replace(payload, 'select 1', 'select 2') WHERE kind = 'statement'"),
        ("header", "UPDATE events SET at = '2000-01-01T00:00:00.000000Z' WHERE seq = 2"),
        ("gap", "DELETE FROM events WHERE seq = 3"),
    ):
        copy = tmp_path / f"{name}.sqlite"
        src = sqlite3.connect(f"file:{gateway.store_path}?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.execute(sql)
        dst.commit()
        dst.close()
        with pytest.raises(AssertionError, match="hash chain broken"):
            verify_chain(copy)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_python_canonical_form_matches_the_gateways(gateway, two_sessions):
    # Recompute every stored payload's canonical bytes and hash independently.
    for e in read_events(gateway.store_path)[:500]:
        assert canonical_json(json.loads(e["payload"])) == e["payload"]
        assert sha256_hex(e["payload"].encode()) == e["payload_hash"]
        assert event_hash(e["writer_id"], e["seq"], e["at"], e["session_id"], e["kind"], e["payload_hash"], e["prev_hash"]) == e["hash"]


def test_threads_are_named_for_operators(gateway, two_sessions):
    """top -H and scripts/bench tell the store loader's CPU from the event loops' by thread name."""
    tasks = Path(f"/proc/{gateway.proc.pid}/task")
    names = sorted(Path(task, "comm").read_text().strip() for task in tasks.iterdir())
    assert names.count("custos-loader") == 1, names
    assert any(name.startswith("NIO-ELT-") for name in names), names
