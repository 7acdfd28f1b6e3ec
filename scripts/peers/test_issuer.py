"""Self-test of the OIDC issuer peer: run with `python3 -m pytest scripts/peers`.

Verification here uses joserfc against the JWKS fetched over HTTP, the way a
relying party sees it, so the issuer is checked end to end rather than by
reading its own key files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError
from joserfc.jwk import KeySet, RSAKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oidc_issuer  # noqa: E402

ISSUER_PY = Path(__file__).resolve().parent / "oidc_issuer.py"
ALLOWED = ["RS256", "ES256"]
SECRET_FIELDS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def relying_party_keys(issuer: str) -> KeySet:
    """What a verifier does: discovery -> jwks_uri -> usable signing keys only."""
    discovery = get_json(issuer + "/.well-known/openid-configuration")
    jwks = get_json(discovery["jwks_uri"])
    usable = [k for k in jwks["keys"] if k.get("use", "sig") == "sig" and k.get("alg") in ALLOWED]
    return KeySet.import_key_set({"keys": usable})


def verify(issuer: str, token: str) -> dict:
    decoded = jwt.decode(token, relying_party_keys(issuer), algorithms=ALLOWED)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": "custos"},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded.claims


@pytest.fixture(scope="session")
def template_state(tmp_path_factory):
    # RSA key generation dominates the run time: make keys once, copy per test.
    return oidc_issuer.ensure_state(tmp_path_factory.mktemp("template") / "state")


@pytest.fixture
def server(tmp_path, template_state):
    shutil.copytree(template_state, tmp_path / "state")
    srv = oidc_issuer.start_server(tmp_path / "state")
    yield srv
    srv.stop()


def test_discovery_names_exact_issuer_and_jwks_uri(server):
    doc = get_json(server.url + "/.well-known/openid-configuration")
    assert doc["issuer"] == f"http://127.0.0.1:{server.port}"
    assert not doc["issuer"].endswith("/")
    assert doc["jwks_uri"] == doc["issuer"] + "/jwks"
    assert (server.state / "issuer").read_text().strip() == doc["issuer"]


def test_jwks_publishes_signers_and_decoys_but_no_secrets(server):
    keys = get_json(server.url + "/jwks")["keys"]
    by_kid = {k["kid"]: k for k in keys}
    assert by_kid["rsa-1"]["kty"] == "RSA" and by_kid["rsa-1"]["alg"] == "RS256"
    assert by_kid["ec-1"]["crv"] == "P-256" and by_kid["ec-1"]["alg"] == "ES256"
    assert by_kid["rsa-enc-1"]["use"] == "enc"
    assert by_kid["k1-1"]["crv"] == "secp256k1"
    for key in keys:
        assert not SECRET_FIELDS & key.keys(), key["kid"]
        assert key["kty"] in {"RSA", "EC"}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_minted_tokens_verify_against_served_jwks(server, alg):
    token = oidc_issuer.mint_token(server.state, alg=alg, sub="agent-7", email="a7@example.com",
                                   groups="agents,dba")
    header = json.loads(b64decode(token.split(".")[0]))
    assert header["alg"] == alg and header["kid"] == ("rsa-1" if alg == "RS256" else "ec-1")
    claims = verify(server.url, token)
    assert claims["sub"] == "agent-7"
    assert claims["email"] == "a7@example.com"
    assert claims["groups"] == ["agents", "dba"]
    assert claims["iss"] == server.url and claims["aud"] == "custos"
    assert claims["exp"] - claims["iat"] == 3600


def test_claim_options(server):
    now = int(time.time())
    token = oidc_issuer.mint_token(server.state, now=now, nbf_offset=120, exp_offset=-5, aud=["a", "b"],
                                   claims={"tenant": "t1", "level": 3}, drop_claims=["jti"])
    claims = json.loads(b64decode(token.split(".")[1]))
    assert claims["nbf"] == now + 120 and claims["exp"] == now - 5
    assert claims["aud"] == ["a", "b"] and claims["tenant"] == "t1" and claims["level"] == 3
    assert "jti" not in claims


def test_expired_token_is_signed_but_expired(server):
    token = oidc_issuer.mint_token(server.state, exp_offset=-60)
    with pytest.raises(ExpiredTokenError):
        verify(server.url, token)


def test_none_token_is_unsigned_and_rejected(server):
    token = oidc_issuer.mint_token(server.state, alg="none")
    head, _, sig = token.split(".")
    assert json.loads(b64decode(head))["alg"] == "none" and sig == ""
    with pytest.raises(JoseError):
        verify(server.url, token)


def test_tampered_token_keeps_old_signature_and_fails(server):
    token = oidc_issuer.mint_token(server.state, sub="agent-1", groups="agents", tamper=True)
    claims = json.loads(b64decode(token.split(".")[1]))
    assert claims["sub"] == "admin" and "dba" in claims["groups"]
    with pytest.raises(BadSignatureError):
        verify(server.url, token)


def test_hs256_pubkey_confusion_token(server):
    token = oidc_issuer.mint_token(server.state, alg="HS256-pubkey")
    head, body, sig = token.split(".")
    assert json.loads(b64decode(head)) == {"typ": "JWT", "alg": "HS256", "kid": "rsa-1"}
    # A naive verifier keyed with the published RSA key's PEM would accept it...
    rsa = next(k for k in get_json(server.url + "/jwks")["keys"] if k["kid"] == "rsa-1")
    pem = RSAKey.import_key(rsa).as_pem(private=False)
    expected = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert b64decode(sig) == expected
    # ...a correct one refuses the algorithm.
    with pytest.raises(JoseError):
        verify(server.url, token)


def test_unpublished_key_and_unknown_kid_fail(server):
    forged = oidc_issuer.mint_token(server.state, key="unpublished")
    assert json.loads(b64decode(forged.split(".")[0]))["kid"] == "rsa-1"
    with pytest.raises(BadSignatureError):
        verify(server.url, forged)
    unknown = oidc_issuer.mint_token(server.state, kid="nobody", key="unpublished")
    assert json.loads(b64decode(unknown.split(".")[0]))["kid"] == "nobody"
    with pytest.raises(Exception):  # joserfc: no key with that kid
        verify(server.url, unknown)
    no_kid = oidc_issuer.mint_token(server.state, no_kid=True)
    assert "kid" not in json.loads(b64decode(no_kid.split(".")[0]))


def test_published_key_with_disallowed_alg(server):
    token = oidc_issuer.mint_token(server.state, alg="RS384")
    assert json.loads(b64decode(token.split(".")[0]))["kid"] == "rsa-1"
    rsa = next(k for k in get_json(server.url + "/jwks")["keys"] if k["kid"] == "rsa-1")
    rsa.pop("alg")
    jwt.decode(token, RSAKey.import_key(rsa), algorithms=["RS384"])  # genuinely signed by rsa-1
    with pytest.raises(JoseError):
        verify(server.url, token)


def test_rotation_is_live_and_old_keys_stay_until_dropped(server):
    old = oidc_issuer.mint_token(server.state)
    assert oidc_issuer.rotate_keys(server.state) == "rsa-2"
    kids = [k["kid"] for k in get_json(server.url + "/jwks")["keys"]]
    assert "rsa-1" in kids and "rsa-2" in kids
    new = oidc_issuer.mint_token(server.state)
    assert json.loads(b64decode(new.split(".")[0]))["kid"] == "rsa-2"
    verify(server.url, old)
    verify(server.url, new)

    assert oidc_issuer.rotate_keys(server.state, drop_old=True) == "rsa-3"
    kids = [k["kid"] for k in get_json(server.url + "/jwks")["keys"]]
    assert "rsa-3" in kids and "rsa-1" not in kids and "rsa-2" not in kids
    assert {"ec-1", "rsa-enc-1", "k1-1"} <= set(kids)
    with pytest.raises(JoseError):
        verify(server.url, old)


def test_stats_and_faults(server):
    get_json(server.url + "/stats/reset")
    get_json(server.url + "/jwks")
    get_json(server.url + "/jwks")
    assert get_json(server.url + "/stats")["jwks_fetches"] == 2
    assert server.jwks_fetches == 2

    oidc_issuer.set_faults(server.state, jwks_status=503)
    with pytest.raises(urllib.error.HTTPError) as err:
        get_json(server.url + "/jwks")
    assert err.value.code == 503
    oidc_issuer.set_faults(server.state)
    assert get_json(server.url + "/jwks")["keys"]
    assert server.jwks_fetches == 4


def test_cli_serve_mint_rotate(tmp_path):
    state = tmp_path / "cli"
    pidfile = tmp_path / "issuer.pid"
    proc = subprocess.Popen(
        [sys.executable, str(ISSUER_PY), "serve", "--state", str(state), "--port", "0",
         "--pidfile", str(pidfile)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("oidc_issuer: serving http://127.0.0.1:")
        url = line.split()[2]
        assert int(pidfile.read_text()) == proc.pid

        def cli(*args: str) -> str:
            return subprocess.run([sys.executable, str(ISSUER_PY), *args, "--state", str(state)],
                                  check=True, capture_output=True, text=True).stdout.strip()

        token = cli("mint", "--groups", "agents", "--claim", "x=1")
        assert verify(url, token)["x"] == 1
        assert cli("rotate") == "rsa-2"
        assert verify(url, cli("mint"))["sub"] == oidc_issuer.DEFAULT_SUBJECT
        with pytest.raises(JoseError):
            verify(url, cli("mint", "--tamper"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not pidfile.exists()


def test_refuses_non_loopback(tmp_path):
    with pytest.raises(SystemExit):
        oidc_issuer.IssuerHTTPServer(tmp_path / "s", host="0.0.0.0")


def test_state_files_permissions(server):
    assert os.stat(server.state / "keys.json").st_mode & 0o077 == 0
