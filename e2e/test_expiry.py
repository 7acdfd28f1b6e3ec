"""A token that expires mid-session ends the session with FATAL 28P01 "token expired"."""

from __future__ import annotations

import time

import psycopg
import pytest

from custos_e2e import WireClient, errors_in


@pytest.fixture
def strict_gateway(start_gateway):
    return start_gateway({"identity": {"clock_skew": "0s"}})


def test_expiry_mid_session_psycopg(strict_gateway, mint, app):
    conn = psycopg.connect(strict_gateway.dsn(mint(ttl=3, sub="short-lived"), app=app), autocommit=True)
    try:
        assert conn.execute("select 'before expiry'").fetchone() == ("before expiry",)
        time.sleep(4.5)
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 'after expiry'")
        assert "token expired" in str(info.value)
    finally:
        conn.close()
    record = strict_gateway.session_by_app(app)
    assert record["outcome"] == "error"
    assert record["sqlstate"] == "28P01"
    assert "token expired" in (record["reason"] or "")
    statements = strict_gateway.show(record["id"])["statements"]
    # the statement after expiry never reached the backend, so it is not recorded as run
    assert [s["text"] for s in statements] == ["select 'before expiry'"]


def test_expiry_mid_session_wire(strict_gateway, mint):
    with WireClient(strict_gateway.port) as wire:
        messages = wire.login(mint(ttl=3))
        assert messages[-1][0] == b"Z", messages
        time.sleep(4.5)
        # the gateway ends the idle session by itself: FATAL, then EOF
        rest, eof = wire.recv_all()
        errors = errors_in(rest)
        assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "28P01")], rest
        assert errors[0]["M"] == "token expired; session ended"
        assert eof
        address = wire.local_address
    assert strict_gateway.session_by_client(address)["outcome"] == "error"


def test_expiry_during_a_running_statement_ends_after_it(strict_gateway, mint, app):
    conn = psycopg.connect(strict_gateway.dsn(mint(ttl=3), app=app), autocommit=True)
    try:
        # pg_sleep outlives the token: the statement completes, then the session ends
        assert conn.execute("select pg_sleep(4), 'done'").fetchone()[1] == "done"
        # The FATAL follows the ReadyForQuery in the same read, and libpq drops buffered input
        # when the next read fails, so the client's message may be just "server closed the
        # connection"; the wire test below checks the FATAL itself.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    record = strict_gateway.session_by_app(app)
    assert (record["outcome"], record["sqlstate"]) == ("error", "28P01")
    assert "token expired" in record["reason"]


def test_expiry_during_a_running_statement_wire(strict_gateway, mint):
    with WireClient(strict_gateway.port) as wire:
        assert wire.login(mint(ttl=3))[-1][0] == b"Z"
        wire.query("select pg_sleep(4), 'done'")
        reply = wire.recv_until([b"Z"])
        assert [t for t, _ in reply] == [b"T", b"D", b"C", b"Z"], reply
        rest, eof = wire.recv_all()
        assert [(e["S"], e["C"], e["M"]) for e in errors_in(rest)] == [("FATAL", "28P01", "token expired; session ended")]
        assert eof


def test_no_expiry_end_when_configured_off(start_gateway, mint, app):
    gw = start_gateway({"identity": {"clock_skew": "0s", "end_session_on_expiry": False}})
    with psycopg.connect(gw.dsn(mint(ttl=2), app=app), autocommit=True) as conn:
        time.sleep(3.5)
        assert conn.execute("select 'still open'").fetchone() == ("still open",)
    assert gw.session_by_app(app)["outcome"] == "closed"
