"""When the SQLite store refuses writes, statements are recorded in the write-ahead journal and
loaded once it takes writes again; past `recording.queue_limit` waiting events they are refused
with 58030 and never run.

The failure is real: a trigger added to the live SQLite store (by another process, as an operator
or a corrupt page would) makes every insert into `events` fail, so the gateway cannot load its
journal into the store. (A full or read-only disk, which also stops the journal, is in
test_faults.py.)
"""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest

from custos_e2e import verify_chain


def _set_store_broken(store, broken: bool) -> None:
    db = sqlite3.connect(str(store), timeout=10)
    try:
        if broken:
            db.execute("CREATE TRIGGER e2e_refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'disk full'); END")
        else:
            db.execute("DROP TRIGGER e2e_refuse")
        db.commit()
    finally:
        db.close()


def _store_statements(store, marker: str) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT count(*) FROM events WHERE kind = 'statement' AND payload LIKE ?", (f"%{marker}%",)).fetchone()[0]
    finally:
        db.close()


def test_store_refusing_writes_holds_events_then_refuses_with_58030(start_gateway, mint, direct, app):
    gw = start_gateway({"recording": {"queue_limit": 30}})
    marker = f"store-failure-{app}"
    ran = 0
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        _set_store_broken(gw.store_path, True)
        try:
            # Recorded in the journal: they run although the store refuses them for now.
            for _ in range(5):
                conn.execute(f"INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', '{marker}')")
                ran += 1
            # A statement and its result per INSERT: the backlog passes 30 events within 15 more.
            with pytest.raises(psycopg.Error) as refused:
                for _ in range(40):
                    conn.execute(f"INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', '{marker}')")
                    ran += 1
            assert refused.value.sqlstate == "58030"
            assert "not run" in str(refused.value)
            assert 5 < ran < 20
            with pytest.raises(psycopg.Error) as extended:
                conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
            assert extended.value.sqlstate == "58030"
        finally:
            _set_store_broken(gw.store_path, False)
        # The store takes the journal's events once it takes writes (retried within a second).
        deadline = time.monotonic() + 15
        while _store_statements(gw.store_path, marker) < ran and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _store_statements(gw.store_path, marker) == ran
        # The session survived and works again.
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # Exactly the statements that were recorded reached PostgreSQL; the refused ones did not.
    assert direct().execute("SELECT count(*) FROM events_log WHERE message = %s", (marker,)).fetchone() == (ran,)
    gw.stop()
    assert _store_statements(gw.store_path, marker) == ran
    assert verify_chain(gw.store_path)["events"] > 0
