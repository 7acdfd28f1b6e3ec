"""Bad wire input from raw sockets: each a clean close (FATAL 08P01 where the protocol allows
one, then EOF), no crash (the gateway keeps serving), and the session's record closed.
Also the backend being down or refusing the gateway's credential (08001)."""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest

from custos_e2e import WireClient, error_fields, errors_in, wait_until


def still_serving(gateway, token):
    with psycopg.connect(gateway.dsn(token), autocommit=True) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)
    assert gateway.alive(), "custos serve is gone"


def expect_protocol_violation(wire: WireClient) -> dict:
    """The rest of the stream is exactly one FATAL 08P01 and then EOF."""
    messages, eof = wire.recv_all()
    assert eof, f"no EOF within the socket timeout; got {messages}"
    errors = errors_in(messages)
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "08P01")], messages
    assert all(t in (b"E", b"N") for t, _ in messages), messages
    return errors[0]


def login_ok(wire: WireClient, token: str, app: str | None = None) -> None:
    messages = wire.login(token, app=app)
    assert messages and messages[-1][0] == b"Z", messages


@pytest.mark.parametrize("length", [0, 3, 4, 7])
def test_startup_length_too_small(gateway, token, length):
    with WireClient(gateway.port) as wire:
        wire.send_raw(struct.pack("!I", length) + b"\x00" * 8)
        err = expect_protocol_violation(wire)
        address = wire.local_address
    assert "length" in err["M"].lower() or "protocol" in err["M"].lower()
    record = gateway.session_by_client(address)
    assert (record["outcome"], record["sqlstate"]) == ("refused", "08P01")
    still_serving(gateway, token)


@pytest.mark.parametrize("length", [10_001, 1 << 20, 0x7FFFFFFF])
def test_startup_length_too_large(gateway, token, length):
    with WireClient(gateway.port) as wire:
        # only the header: the gateway must not wait for a body it will never accept
        wire.send_raw(struct.pack("!I", length) + struct.pack("!I", 196608))
        started = time.monotonic()
        expect_protocol_violation(wire)
        assert time.monotonic() - started < 5
        address = wire.local_address
    assert gateway.session_by_client(address)["outcome"] == "refused"
    still_serving(gateway, token)


def test_unsupported_protocol_version(gateway, token):
    with WireClient(gateway.port) as wire:
        body = struct.pack("!I", 0x00020000) + b"user\0agent\0\0"
        wire.send_raw(struct.pack("!I", len(body) + 4) + body)
        messages, eof = wire.recv_all()
        assert eof
        assert [e["C"] for e in errors_in(messages)] in (["08P01"], ["0A000"]), messages
    still_serving(gateway, token)


def test_message_before_authentication(gateway, token):
    with WireClient(gateway.port) as wire:
        wire.send_startup({"user": "agent", "database": "appdb"})
        auth = wire.recv()
        assert auth[0] == b"R" and struct.unpack("!I", auth[1][:4])[0] == 3  # cleartext password request
        wire.query("select 1")  # a Query instead of the password
        expect_protocol_violation(wire)
        address = wire.local_address
    record = gateway.session_by_client(address)
    assert (record["outcome"], record["sqlstate"]) == ("refused", "08P01")
    still_serving(gateway, token)


def test_query_before_startup(gateway, token):
    with WireClient(gateway.port) as wire:
        wire.query("select 1")  # 'Q' read as a startup length of ~1.3 GB
        expect_protocol_violation(wire)
    still_serving(gateway, token)


def test_unknown_message_type_after_auth(gateway, token, app):
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        wire.send(b"y", b"\x00\x01")
        err = expect_protocol_violation(wire)
    record = gateway.session_by_app(app)
    assert record["outcome"] not in ("open", "closed"), record
    assert record["sqlstate"] == "08P01"
    assert "protocol violation" in err["M"]
    still_serving(gateway, token)


@pytest.mark.parametrize("length", [0, 3])
def test_message_length_too_small_after_auth(gateway, token, app, length):
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        wire.send_raw(b"Q" + struct.pack("!I", length))
        expect_protocol_violation(wire)
    assert gateway.session_by_app(app)["outcome"] == "error"
    still_serving(gateway, token)


def test_message_too_large_after_auth(gateway, token, app):
    limit = gateway.config["listen"]["max_message_size"]
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        wire.send_raw(b"Q" + struct.pack("!I", limit + 1))  # header only
        started = time.monotonic()
        expect_protocol_violation(wire)
        assert time.monotonic() - started < 5
    assert gateway.session_by_app(app)["outcome"] == "error"
    still_serving(gateway, token)


def test_message_at_the_limit_is_accepted(gateway, token, app):
    limit = gateway.config["listen"]["max_message_size"]
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        # a Query of exactly max_message_size bytes including the length field
        filler = limit - 4 - len("select '' as x") - 1
        text = "select '" + "a" * filler + "' as x"
        wire.query(text)
        reply = wire.recv_until([b"Z"])
        assert [t for t, _ in reply] == [b"T", b"D", b"C", b"Z"], [t for t, _ in reply]
        wire.send(b"X")
    assert gateway.session_by_app(app)["outcome"] == "closed"


def test_password_message_after_auth(gateway, token, app):
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        wire.send(b"p", token.encode() + b"\0")
        expect_protocol_violation(wire)
    assert gateway.session_by_app(app)["outcome"] == "error"
    still_serving(gateway, token)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_vanishes_mid_query(gateway, token, app, direct, how):
    marker = f"vanished-{app}"
    with WireClient(gateway.port) as wire:
        login_ok(wire, token, app)
        wire.query(f"select pg_sleep(30), '{marker}'")
        time.sleep(0.5)
        if how == "rst":  # an abrupt close (a killed process, a dropped network) resets the connection
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    record = gateway.session_by_app(app, timeout=15)
    assert record["outcome"] == "error", record
    assert record["ended_at"]
    statements = gateway.show(record["id"])["statements"]
    assert [s["text"] for s in statements] == [f"select pg_sleep(30), '{marker}'"]
    # the backend does not go on running the orphaned query
    admin = direct("super")

    def backend_idle():
        return admin.execute("select count(*) from pg_stat_activity where state = 'active' and query like %s "
                             "and pid <> pg_backend_pid()",
                             (f"%{marker}%",)).fetchone()[0] == 0 or None

    wait_until(backend_idle, timeout=10, what="the orphaned pg_sleep(30) to stop on the backend")
    still_serving(gateway, token)


def test_client_vanishes_after_startup_packet(gateway, token):
    with WireClient(gateway.port) as wire:
        wire.send_startup({"user": "agent", "database": "appdb", "application_name": "e2e-vanish-startup"})
        assert wire.recv()[0] == b"R"
        address = wire.local_address
    record = gateway.session_by_client(address)
    assert record["outcome"] in ("refused", "error"), record
    still_serving(gateway, token)


def test_startup_timeout(start_gateway, token):
    gw = start_gateway({"listen": {"startup_timeout": "1s"}})
    with WireClient(gw.port) as wire:
        wire.send_raw(b"\x00\x00")  # half a length, then silence
        started = time.monotonic()
        expect_protocol_violation(wire)
        assert time.monotonic() - started < 5
        address = wire.local_address
    assert gw.session_by_client(address)["outcome"] == "refused"


def test_cancel_request_with_unknown_key_is_harmless(gateway, token, app):
    with psycopg.connect(gateway.dsn(token, app=app), autocommit=True) as conn:
        with WireClient(gateway.port) as wire:
            wire.send_raw(struct.pack("!IIII", 16, 80877102, 12345, 67890))
            assert wire.recv_all() == ([], True)
        assert conn.execute("select 'not cancelled'").fetchone() == ("not cancelled",)


def test_many_concurrent_bad_clients_then_good(gateway, token):
    sockets = []
    try:
        for i in range(30):
            s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            s.sendall(struct.pack("!I", 2) if i % 2 else b"\xff" * 64)
            sockets.append(s)
        for s in sockets:
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data[:1] == b"E" and error_fields(data[5:])["C"] == "08P01"
    finally:
        for s in sockets:
            s.close()
    still_serving(gateway, token)


# ---- backend failures


def test_backend_down(gateway, token, app):
    with WireClient(gateway.port) as wire:
        messages = wire.login(token, database="backend_down", app=app)
        errors = errors_in(messages)
        assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "08001")], messages
        assert wire.recv_all()[1]
    record = gateway.session_by_app(app)
    assert (record["outcome"], record["sqlstate"], record["connection"]) == ("refused", "08001", "backend_down")
    with pytest.raises(psycopg.OperationalError, match="backend"):
        psycopg.connect(gateway.dsn(token, dbname="backend_down")).close()
    still_serving(gateway, token)


def test_backend_refuses_gateway_credential(gateway, token, app):
    with WireClient(gateway.port) as wire:
        messages = wire.login(token, database="bad_credential", app=app)
        errors = errors_in(messages)
        assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "08001")], messages
        # the backend's own message (with the role name) is not passed to the agent
        assert "custos_scram" not in errors[0]["M"]
    record = gateway.session_by_app(app)
    assert (record["outcome"], record["sqlstate"]) == ("refused", "08001")
    still_serving(gateway, token)


def test_backend_connection_killed_mid_session(gateway, token, app, direct):
    with psycopg.connect(gateway.dsn(token, app=app), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert direct("super").execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    record = gateway.session_by_app(app)
    assert record["outcome"] == "error"
    still_serving(gateway, token)
