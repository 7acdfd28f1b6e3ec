#!/usr/bin/env python3
"""A real OIDC issuer on loopback, for Custos tests and benchmarks.

Built on joserfc, a JOSE library independent of the gateway's jwt-kit, so a
token the gateway accepts was made by someone else's code.

State directory layout (all written atomically, so a running server never
reads half a file):
  keys.json    private JWKs (mode 0600) and which kid signs by default
  jwks.json    the published public key set; `serve` re-reads it per request
  issuer       the issuer URL, e.g. http://127.0.0.1:9000 (no trailing slash)
  faults.json  optional fault injection read per request (see `fault`)

Subcommands: init, serve, mint, rotate, fault, jwks. Run with -h for details.
Importable: ensure_state, mint_token, rotate_keys, set_faults, start_server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

LOOPBACK = "127.0.0.1"
DEFAULT_AUDIENCE = "custos"
DEFAULT_SUBJECT = "agent-1"

# Fields that only private or symmetric JWKs carry. Checked before anything is
# published, so a bug here can never leak signing material to the gateway.
_SECRET_FIELDS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

# RSA algorithms joserfc can sign with one RSA key; RS384/RS512/PS256 make
# tokens signed by a *published* key with an algorithm the gateway refuses.
_RSA_ALGS = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


# --------------------------------------------------------------------------
# state


def _write_atomic(path: Path, data: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load_keys(state: Path) -> dict:
    return json.loads((state / "keys.json").read_text())


def _public_jwk(entry: dict) -> dict:
    private = entry["jwk"]
    pub = {k: v for k, v in private.items() if k not in _SECRET_FIELDS}
    return pub


def _publish(state: Path, keys: dict) -> None:
    published = [_public_jwk(e) for e in keys["keys"] if e.get("published", True)]
    for key in published:
        leaked = _SECRET_FIELDS & key.keys()
        if leaked:
            raise AssertionError(f"refusing to publish secret JWK fields {sorted(leaked)}")
    _write_atomic(state / "jwks.json", json.dumps({"keys": published}, indent=2) + "\n")


def _save_keys(state: Path, keys: dict) -> None:
    _write_atomic(state / "keys.json", json.dumps(keys, indent=2) + "\n", mode=0o600)
    _publish(state, keys)


def _rsa(kid: str, use: str = "sig", alg: str = "RS256") -> dict:
    key = RSAKey.generate_key(2048, private=True)
    return {**key.as_dict(private=True), "kid": kid, "use": use, "alg": alg}


def _ec(kid: str, crv: str, alg: str) -> dict:
    key = ECKey.generate_key(crv, private=True)
    return {**key.as_dict(private=True), "kid": kid, "use": "sig", "alg": alg}


def ensure_state(state_dir: str | os.PathLike, issuer: str | None = None) -> Path:
    """Create the key material if missing; set the issuer URL if given."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if not (state / "keys.json").exists():
        keys = {
            "default_rsa": "rsa-1",
            "default_ec": "ec-1",
            "keys": [
                {"role": "sign", "jwk": _rsa("rsa-1")},
                {"role": "sign", "jwk": _ec("ec-1", "P-256", "ES256")},
                # Decoys: public keys a verifier must skip without rejecting
                # the whole set (jwt-kit fails the full JWKS on either).
                {"role": "decoy", "jwk": _rsa("rsa-enc-1", use="enc", alg="RSA-OAEP-256")},
                {"role": "decoy", "jwk": _ec("k1-1", "secp256k1", "ES256K")},
            ],
        }
        _save_keys(state, keys)
    elif not (state / "jwks.json").exists():
        _publish(state, _load_keys(state))
    if issuer is not None:
        _write_atomic(state / "issuer", issuer.rstrip("/") + "\n")
    return state


def read_issuer(state_dir: str | os.PathLike) -> str:
    path = Path(state_dir) / "issuer"
    if not path.exists():
        raise SystemExit(f"oidc_issuer: {path} missing: start `serve` first or pass --iss")
    return path.read_text().strip()


def public_jwks(state_dir: str | os.PathLike) -> dict:
    return json.loads((Path(state_dir) / "jwks.json").read_text())


def rotate_keys(state_dir: str | os.PathLike, drop_old: bool = False) -> str:
    """Add rsa-N+1, make it the default RSA signer; return its kid."""
    state = ensure_state(state_dir)
    keys = _load_keys(state)
    numbers = [
        int(e["jwk"]["kid"].split("-")[1])
        for e in keys["keys"]
        if e["role"] == "sign" and e["jwk"]["kid"].split("-")[0] == "rsa"
    ]
    kid = f"rsa-{max(numbers, default=0) + 1}"
    if drop_old:
        # Old RSA signers stop being published; EC and decoys stay.
        for e in keys["keys"]:
            if e["role"] == "sign" and e["jwk"]["kty"] == "RSA":
                e["published"] = False
    keys["keys"].append({"role": "sign", "jwk": _rsa(kid)})
    keys["default_rsa"] = kid
    _save_keys(state, keys)
    return kid


def set_faults(state_dir: str | os.PathLike, jwks_status: int | None = None,
               delay_ms: int | None = None) -> None:
    """Make the server misbehave (e.g. JWKS 500, slow answers); None clears."""
    faults = {k: v for k, v in (("jwks_status", jwks_status), ("delay_ms", delay_ms)) if v}
    path = Path(state_dir) / "faults.json"
    if faults:
        _write_atomic(path, json.dumps(faults) + "\n")
    elif path.exists():
        path.unlink()


# --------------------------------------------------------------------------
# minting


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _find(keys: dict, kid: str) -> dict:
    for e in keys["keys"]:
        if e["jwk"]["kid"] == kid:
            return e["jwk"]
    raise SystemExit(f"oidc_issuer: no key with kid {kid!r} in state")


def mint_token(
    state_dir: str | os.PathLike,
    *,
    sub: str | None = DEFAULT_SUBJECT,
    email: str | None = None,
    groups: Iterable[str] | str | None = None,
    aud: str | list[str] | None = DEFAULT_AUDIENCE,
    ttl: int = 3600,
    nbf_offset: int | None = None,
    exp_offset: int | None = None,
    iss: str | None = None,
    alg: str = "RS256",
    kid: str | None = None,
    no_kid: bool = False,
    key: str | None = None,
    tamper: bool = False,
    claims: dict[str, Any] | None = None,
    drop_claims: Iterable[str] = (),
    now: int | None = None,
) -> str:
    """Return a compact JWT.

    alg: RS256 (default signer), ES256 (ec-1), RS384/RS512/PS256... (default
    RSA key, for "algorithm not allowed"), none (unsigned), HS256-pubkey
    (HMAC keyed with the RSA public key PEM: the key-confusion attack).
    key="unpublished" signs with a fresh key never published, keeping the kid.
    tamper=True rewrites claims after signing (sub -> "admin", adds group
    "dba") and keeps the old signature.
    """
    state = ensure_state(state_dir)
    keys = _load_keys(state)
    now = int(time.time()) if now is None else now

    payload: dict[str, Any] = {"iss": iss if iss is not None else read_issuer(state)}
    if sub is not None:
        payload["sub"] = sub
    if aud is not None:
        payload["aud"] = aud
    if email is not None:
        payload["email"] = email
    if groups is not None:
        if isinstance(groups, str):
            groups = [g for g in groups.split(",") if g]
        payload["groups"] = list(groups)
    payload["iat"] = now
    if nbf_offset is not None:
        payload["nbf"] = now + nbf_offset
    payload["exp"] = now + (exp_offset if exp_offset is not None else ttl)
    payload["jti"] = str(uuid.uuid4())
    payload.update(claims or {})
    for name in drop_claims:
        payload.pop(name, None)

    if alg == "ES256":
        signer = _find(keys, keys["default_ec"])
    else:
        signer = _find(keys, keys["default_rsa"])
    header_kid = kid if kid is not None else signer["kid"]
    header: dict[str, Any] = {"typ": "JWT", "alg": alg}
    if not no_kid:
        header["kid"] = header_kid

    if alg == "none":
        token = f"{_b64json(header)}.{_b64json(payload)}."
    elif alg == "HS256-pubkey":
        header["alg"] = "HS256"
        secret = RSAKey.import_key(signer).as_pem(private=False)
        signing_input = f"{_b64json(header)}.{_b64json(payload)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(mac)}"
    elif alg == "ES256" or alg in _RSA_ALGS:
        if key == "unpublished":
            fresh = ECKey.generate_key("P-256") if alg == "ES256" else RSAKey.generate_key(2048)
            signing_key = fresh
        elif key is None:
            # Drop the JWK's own "alg" so joserfc lets rsa-1 sign RS384 etc.
            material = {k: v for k, v in signer.items() if k != "alg"}
            signing_key = (ECKey if alg == "ES256" else RSAKey).import_key(material)
        else:
            raise ValueError(f"unknown key choice {key!r} (only 'unpublished')")
        token = jwt.encode(header, payload, signing_key, algorithms=[alg])
    else:
        raise ValueError(f"unsupported alg {alg!r}")

    if tamper:
        head, body, sig = token.split(".")
        claims_now = json.loads(_b64decode(body))
        claims_now["sub"] = "admin"
        claims_now["groups"] = list(claims_now.get("groups", [])) + ["dba"]
        token = f"{head}.{_b64json(claims_now)}.{sig}"
    return token


# --------------------------------------------------------------------------
# HTTP server


class _Handler(BaseHTTPRequestHandler):
    server: "IssuerHTTPServer"
    protocol_version = "HTTP/1.1"  # keep-alive, like a real IdP behind a CDN

    def log_message(self, fmt: str, *args: Any) -> None:
        sys.stderr.write("oidc_issuer: %s %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: int, body: Any) -> None:
        data = (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _faults(self) -> dict:
        try:
            return json.loads((self.server.state / "faults.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        path = self.path.split("?", 1)[0]
        faults = self._faults()
        if faults.get("delay_ms"):
            time.sleep(faults["delay_ms"] / 1000)
        if path == "/.well-known/openid-configuration":
            srv.count("discovery_fetches")
            self._send(200, srv.discovery())
        elif path == "/jwks":
            srv.count("jwks_fetches")
            if faults.get("jwks_status"):
                self._send(int(faults["jwks_status"]), {"error": "injected fault"})
                return
            # Read from disk every time so `rotate` is visible immediately.
            self._send(200, public_jwks(srv.state))
        elif path == "/stats":
            self._send(200, srv.stats())
        elif path == "/stats/reset":
            srv.reset_stats()
            self._send(200, srv.stats())
        else:
            self._send(404, {"error": "not found"})


class IssuerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state_dir: str | os.PathLike, host: str = LOOPBACK, port: int = 0):
        if host != LOOPBACK:
            raise SystemExit("oidc_issuer: binds 127.0.0.1 only")
        super().__init__((host, port), _Handler)
        self.port = self.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.state = ensure_state(state_dir, issuer=self.url)
        self._lock = threading.Lock()
        self._stats = {"jwks_fetches": 0, "discovery_fetches": 0}
        self._thread: threading.Thread | None = None

    def discovery(self) -> dict:
        u = self.url
        return {
            "issuer": u,
            "jwks_uri": f"{u}/jwks",
            # Required by OIDC Discovery 1.0; never exercised by the gateway.
            "authorization_endpoint": f"{u}/authorize",
            "token_endpoint": f"{u}/token",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }

    def count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            for k in self._stats:
                self._stats[k] = 0

    @property
    def jwks_fetches(self) -> int:
        return self.stats()["jwks_fetches"]

    def start(self) -> "IssuerHTTPServer":
        """Serve from a daemon thread (for pytest); stop() to end."""
        # A short poll interval makes stop() quick; shutdown() waits one poll.
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join()


def start_server(state_dir: str | os.PathLike, port: int = 0) -> IssuerHTTPServer:
    return IssuerHTTPServer(state_dir, LOOPBACK, port).start()


# --------------------------------------------------------------------------
# CLI


def _claim(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected k=v")
    try:
        return name, json.loads(value)  # numbers, booleans, lists, objects
    except ValueError:
        return name, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oidc_issuer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve discovery and JWKS")
    s.add_argument("--state", required=True)
    s.add_argument("--host", default=LOOPBACK)
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--pidfile")

    i = sub.add_parser("init", help="create keys and set the issuer URL, without serving")
    i.add_argument("--state", required=True)
    i.add_argument("--issuer")

    m = sub.add_parser("mint", help="print a compact JWT")
    m.add_argument("--state", required=True)
    m.add_argument("--sub", default=DEFAULT_SUBJECT)
    m.add_argument("--email")
    m.add_argument("--groups", help="comma separated")
    m.add_argument("--aud", action="append", help="repeat for a list audience")
    m.add_argument("--ttl", type=int, default=3600)
    m.add_argument("--nbf-offset", type=int)
    m.add_argument("--exp-offset", type=int)
    m.add_argument("--iss")
    m.add_argument("--alg", default="RS256",
                   choices=sorted(_RSA_ALGS | {"ES256", "none", "HS256-pubkey"}))
    m.add_argument("--kid")
    m.add_argument("--no-kid", action="store_true", help="omit the kid header")
    m.add_argument("--key", choices=["unpublished"])
    m.add_argument("--tamper", action="store_true")
    m.add_argument("--claim", action="append", type=_claim, default=[],
                   help="k=v, v parsed as JSON when it is JSON")
    m.add_argument("--drop-claim", action="append", default=[], help="e.g. exp")

    r = sub.add_parser("rotate", help="publish a new default RSA key")
    r.add_argument("--state", required=True)
    r.add_argument("--drop-old", action="store_true")

    f = sub.add_parser("fault", help="inject faults into a running server")
    f.add_argument("--state", required=True)
    f.add_argument("--jwks-status", type=int)
    f.add_argument("--delay-ms", type=int)
    f.add_argument("--clear", action="store_true")

    j = sub.add_parser("jwks", help="print the published JWKS")
    j.add_argument("--state", required=True)

    a = p.parse_args(argv)
    if a.cmd == "serve":
        server = IssuerHTTPServer(a.state, a.host, a.port)
        if a.pidfile:
            _write_atomic(Path(a.pidfile), f"{os.getpid()}\n")
        print(f"oidc_issuer: serving {server.url} port {server.port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if a.pidfile:
                Path(a.pidfile).unlink(missing_ok=True)
    elif a.cmd == "init":
        ensure_state(a.state, issuer=a.issuer)
    elif a.cmd == "mint":
        aud: Any = None
        if a.aud:
            aud = a.aud[0] if len(a.aud) == 1 else a.aud
        else:
            aud = DEFAULT_AUDIENCE
        print(mint_token(
            a.state, sub=a.sub, email=a.email, groups=a.groups, aud=aud, ttl=a.ttl,
            nbf_offset=a.nbf_offset, exp_offset=a.exp_offset, iss=a.iss, alg=a.alg,
            kid=a.kid, no_kid=a.no_kid, key=a.key, tamper=a.tamper,
            claims=dict(a.claim), drop_claims=a.drop_claim,
        ))
    elif a.cmd == "rotate":
        print(rotate_keys(a.state, drop_old=a.drop_old))
    elif a.cmd == "fault":
        if a.clear:
            set_faults(a.state)
        else:
            set_faults(a.state, jwks_status=a.jwks_status, delay_ms=a.delay_ms)
    elif a.cmd == "jwks":
        print(json.dumps(public_jwks(ensure_state(a.state)), indent=2))
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    import signal

    # SIGTERM from issuer_stop must run serve's finally: (pidfile cleanup).
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
