"""When the store cannot be written, statements are refused with 58030 and never run.

The failure is real: a trigger added to the live SQLite store (by another process, as an operator
or a full disk would) makes every insert into `events` fail, so the gateway's write-ahead commit
fails. The statement must not reach PostgreSQL, the client gets SQLSTATE 58030, the session goes
on, and once the store recovers statements run again and the chain still verifies.
"""

from __future__ import annotations

import sqlite3

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


def test_store_failure_refuses_statements_with_58030(start_gateway, mint, direct, app):
    gw = start_gateway()
    marker = f"store-failure-{app}"
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        _set_store_broken(gw.store_path, True)
        try:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
            assert refused.value.sqlstate == "58030"
            assert "not run" in str(refused.value)
            with pytest.raises(psycopg.Error) as simple:
                conn.execute(f"INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', '{marker}')", prepare=False)
            assert simple.value.sqlstate == "58030"
        finally:
            _set_store_broken(gw.store_path, False)
        # The session survived and works again once the store does.
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # Neither refused INSERT reached PostgreSQL.
    assert direct().execute("SELECT count(*) FROM events_log WHERE message = %s", (marker,)).fetchone() == (0,)
    assert verify_chain(gw.store_path)["events"] > 0
