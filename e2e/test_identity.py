"""Identity: every bad token refused with the right SQLSTATE and message, each refusal recorded
as a failed attempt; groups and connections; key rotation.

libpq (psql, psycopg) does not expose the SQLSTATE of a connection failure, so the SQLSTATE is
read from the ErrorResponse with a raw wire client; psycopg's message is checked as well.
"""

from __future__ import annotations

import base64
import json
import time

import psycopg
import pytest

import oidc_issuer
from custos_e2e import WireClient, errors_in, verify_chain

# (case id, mint_token arguments, expected message fragment)
BAD_TOKENS = [
    ("expired", {"exp_offset": -120}, "token expired"),
    ("not_yet_valid", {"nbf_offset": 600}, "token not yet valid"),
    ("wrong_issuer", {"iss": "http://127.0.0.1:1/not-trusted"}, "issuer not trusted"),
    ("wrong_audience", {"aud": "someone-else"}, "audience mismatch"),
    ("alg_none", {"alg": "none"}, "algorithm not allowed"),
    ("alg_rs384", {"alg": "RS384"}, "algorithm not allowed"),
    ("unpublished_key_known_kid", {"key": "unpublished"}, "signature invalid"),
    ("unknown_kid", {"kid": "no-such-kid"}, "unknown signing key"),
    ("hmac_with_public_key", {"alg": "HS256-pubkey"}, "algorithm not allowed"),
    ("tampered_payload", {"tamper": True}, "signature invalid"),
    ("garbage", None, "malformed token"),
]


def bad_token(mint, args):
    return "this-is-not.a-jwt" if args is None else mint(**args)


@pytest.mark.parametrize("case,args,fragment", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_token_refused_over_the_wire(gateway, mint, case, args, fragment):
    token = bad_token(mint, args)
    with WireClient(gateway.port) as wire:
        messages = wire.login(token, app=f"e2e-bad-{case}")
        address = wire.local_address
        errors = errors_in(messages)
        assert len(errors) == 1, messages
        assert errors[0]["C"] == "28P01", errors[0]
        assert errors[0]["S"] == "FATAL"
        assert fragment in errors[0]["M"], errors[0]
        assert all(t != b"Z" for t, _ in messages), "a refused client must never see ReadyForQuery"
        assert wire.recv_all() == ([], True), "connection not closed after the FATAL"
    refused = gateway.session_by_client(address)
    assert refused["outcome"] == "refused"
    assert refused["sqlstate"] == "28P01"
    assert fragment in (refused["reason"] or ""), refused
    assert refused["application_name"] == f"e2e-bad-{case}"
    assert refused["statement_count"] == 0


@pytest.mark.parametrize("case,args,fragment", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_token_refused_for_psycopg(gateway, mint, case, args, fragment):
    app = f"e2e-bad-pg3-{case}"
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.dsn(bad_token(mint, args), app=app)).close()
    assert fragment in str(info.value)
    refused = gateway.session_by_app(app)
    assert (refused["outcome"], refused["sqlstate"]) == ("refused", "28P01")


def test_empty_password_refused(gateway):
    with WireClient(gateway.port) as wire:
        errors = errors_in(wire.login(""))
        assert [e["C"] for e in errors] == ["28P01"]


def refused_with(gateway, token, database, sqlstate, fragment=None, app=None):
    with WireClient(gateway.port) as wire:
        messages = wire.login(token, database=database, app=app)
        errors = errors_in(messages)
        assert [e["C"] for e in errors] == [sqlstate], messages
        if fragment:
            assert fragment in errors[0]["M"], errors[0]
        assert wire.recv_all()[1], "connection not closed"
        address = wire.local_address
    record = gateway.session_by_client(address)
    assert (record["outcome"], record["sqlstate"]) == ("refused", sqlstate), record
    return record


def test_identity_not_in_allowed_groups(gateway, mint):
    record = refused_with(gateway, mint(sub="guest-1", email="guest@example.com", groups=["guests"]), "appdb", "28000")
    # the identity was proven, so the failed attempt names it
    assert record["subject"] == "guest-1" and record["email"] == "guest@example.com"
    assert record["connection"] == "appdb"
    # no groups claim at all
    refused_with(gateway, mint(groups=None), "appdb", "28000")
    # agents may use appdb but not dba_only; dba may
    refused_with(gateway, mint(groups=["agents"]), "dba_only", "28000")
    with psycopg.connect(gateway.dsn(mint(groups=["dba"]), dbname="dba_only")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_unknown_connection(gateway, token):
    refused_with(gateway, token, "no_such_connection", "3D000", "no_such_connection")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(gateway.dsn(token, dbname="no_such_connection")).close()


def test_es256_token_accepted(gateway, mint, app):
    with psycopg.connect(gateway.dsn(mint(alg="ES256", sub="es-agent"), app=app)) as conn:
        assert conn.execute("select 'es256'").fetchone() == ("es256",)
    assert gateway.session_by_app(app)["subject"] == "es-agent"


def test_audience_list_containing_ours_accepted(gateway, mint, app):
    with psycopg.connect(gateway.dsn(mint(aud=["other", "custos"]), app=app)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_key_rotation_new_kid_accepted(gateway, mint, issuer, app):
    # The gateway has the current JWKS cached.
    with psycopg.connect(gateway.dsn(mint(), app=app + "-before")) as conn:
        conn.execute("select 1")
    fetches = issuer.jwks_fetches
    new_kid = oidc_issuer.rotate_keys(issuer.state)
    token = mint(sub="rotated-agent")
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"] == new_kid
    # jwks_refresh_min_interval is 1s in these configs: let any recent refetch age out
    time.sleep(1.2)
    with psycopg.connect(gateway.dsn(token, app=app)) as conn:
        assert conn.execute("select 'rotated'").fetchone() == ("rotated",)
    assert issuer.jwks_fetches > fetches, "the gateway accepted an unknown kid without refetching the JWKS"
    assert gateway.session_by_app(app)["subject"] == "rotated-agent"
    verify_chain(gateway.store_path)


def test_unknown_kid_refetch_is_rate_limited(start_gateway, mint, issuer):
    gw = start_gateway({"identity": {"jwks_refresh_min_interval": "30s"}})
    with psycopg.connect(gw.dsn(mint())) as conn:
        conn.execute("select 1")
    time.sleep(0.2)
    fetches = issuer.jwks_fetches
    for _ in range(5):
        with WireClient(gw.port) as wire:
            assert [e["C"] for e in errors_in(wire.login(mint(kid="no-such-kid")))] == ["28P01"]
    # five unknown kids within the interval: at most one refetch
    assert issuer.jwks_fetches - fetches <= 1
