"""Client TLS (listen.tls), the cleartext-on-loopback switch, backend TLS (require,
verify-full) and the backend authentication methods (SCRAM, md5, cleartext), password_env."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from custos_e2e import WireClient, errors_in


@pytest.fixture(scope="module")
def server_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.crt")],
        check=True, capture_output=True, timeout=60)
    return d / "server.crt", d / "server.key"


@pytest.fixture
def tls_gateway(start_gateway, server_cert):
    cert, key = server_cert
    return start_gateway({"listen": {"allow_cleartext_on_loopback": False,
                                     "tls": {"certificate": str(cert), "key": str(key)}}})


def test_psycopg_sslmode_require(tls_gateway, token, app):
    with psycopg.connect(tls_gateway.dsn(token, app=app, sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 'over tls'").fetchone() == ("over tls",)
    assert tls_gateway.session_by_app(app)["outcome"] == "closed"


def test_psycopg_sslmode_verify_full(tls_gateway, token, server_cert, app):
    cert, _ = server_cert
    with psycopg.connect(tls_gateway.dsn(token, app=app, sslmode="verify-full", sslrootcert=str(cert))) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_psql_sslmode_require(tls_gateway, token, app):
    result = tls_gateway.psql(token, "-A", "-t", "-c", "select 'psql over tls'", sslmode="require", app=app)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "psql over tls"


def test_cleartext_refused_when_tls_configured_and_loopback_cleartext_off(tls_gateway, token):
    with WireClient(tls_gateway.port) as wire:
        messages = wire.login(token)
        assert [e["C"] for e in errors_in(messages)] == ["28000"], messages
        assert not any(t == b"R" for t, _ in messages), "asked for the token in cleartext"
        address = wire.local_address
    assert tls_gateway.session_by_client(address)["outcome"] == "refused"
    with pytest.raises(psycopg.OperationalError, match="TLS"):
        psycopg.connect(tls_gateway.dsn(token, sslmode="disable")).close()


def test_no_tls_and_loopback_cleartext_off(start_gateway, token):
    gw = start_gateway({"listen": {"allow_cleartext_on_loopback": False}})
    with WireClient(gw.port) as wire:
        wire.send_raw(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
        assert wire.recv_byte() == b"N"
        messages = wire.login(token)
        errors = errors_in(messages)
        assert [e["C"] for e in errors] == ["28000"], messages
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(token, sslmode="disable")).close()
    # sslmode=require: the client itself gives up (server does not support SSL)
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(gw.dsn(token, sslmode="require")).close()


def test_ssl_request_answered_S_with_tls(tls_gateway):
    with WireClient(tls_gateway.port) as wire:
        wire.send_raw(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        assert wire.recv_byte() == b"S"


# ---- backends


def whoami(gateway, token, dbname, app):
    with psycopg.connect(gateway.dsn(token, dbname=dbname, app=app)) as conn:
        return conn.execute(
            "select current_user, current_database(), (select ssl from pg_stat_ssl where pid = pg_backend_pid())").fetchone()


@pytest.mark.parametrize("connection,user", [
    ("appdb", "custos_scram"),      # SCRAM-SHA-256
    ("appdb_md5", "custos_md5"),    # md5 (the role has an md5 verifier)
    ("appdb_plain", "custos_plain"),  # cleartext password
    ("appdb_env", "custos_scram"),  # password_env instead of password_file
])
def test_backend_auth_methods(gateway, token, app, connection, user):
    assert whoami(gateway, token, connection, app) == (user, "appdb", False)
    record = gateway.session_by_app(app)
    assert (record["connection"], record["outcome"]) == (connection, "closed")


@pytest.mark.parametrize("connection", ["appdb_require", "appdb_verify"])
def test_backend_tls(gateway, pg, token, app, connection):
    if not pg.ssl:
        pytest.skip("the PostgreSQL cluster has no TLS (CUSTOS_PG_SSL=0)")
    assert whoami(gateway, token, connection, app) == ("custos_scram", "appdb", True)


def test_backend_verify_full_with_wrong_ca_refused(start_gateway, pg, server_cert, token):
    if not pg.ssl:
        pytest.skip("the PostgreSQL cluster has no TLS")
    cert, _ = server_cert  # a CA that did not sign the PostgreSQL server certificate
    gw = start_gateway({"connections": {"appdb_verify": {"ca_file": str(cert)}}})
    with WireClient(gw.port) as wire:
        errors = errors_in(wire.login(token, database="appdb_verify"))
        assert [e["C"] for e in errors] == ["08001"], errors
        address = wire.local_address
    assert gw.session_by_client(address)["sqlstate"] == "08001"
