"""Fixtures for the Custos end-to-end suite (real PostgreSQL, real issuer, real gateway).

PostgreSQL: reused when scripts/test exported CUSTOS_IT_PG_PORT and CUSTOS_PG_SECRETS
(pg_start's environment); otherwise started here with scripts/lib/common.sh pg_start in a
temporary folder and removed at the end.
Issuer: scripts/peers/oidc_issuer.py, in-process (joserfc, independent of the gateway's jwt-kit).
Gateway: `custos serve` per config, on port 0 (the "listening on" line names the port), stopped
with SIGTERM at teardown; the teardown fails the test if it does not exit 0 within 10 s.

Run: python3 -m pytest e2e -q
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts" / "peers"))

import oidc_issuer  # noqa: E402
from custos_e2e import (  # noqa: E402
    ROOT, Gateway, GatewayError, PostgresPeer, closed_port, copy_secrets, custos_bin, deep_merge, free_port,
)

COMMON_SH = ROOT / "scripts" / "lib" / "common.sh"
TEST_TIMEOUT = int(os.environ.get("CUSTOS_E2E_TEST_TIMEOUT", "120"))


# --------------------------------------------------------------------------
# a per-test watchdog (no pytest-timeout dependency): SIGALRM fails a hung test


class TestTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimedOut(f"test exceeded {TEST_TIMEOUT}s (CUSTOS_E2E_TEST_TIMEOUT)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_sessionstart(session):
    if not custos_bin().exists():
        pytest.exit(f"no gateway binary at {custos_bin()} (build with `swift build`, or set CUSTOS_BIN)", returncode=2)


# --------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def pg():
    port = os.environ.get("CUSTOS_IT_PG_PORT")
    secrets = os.environ.get("CUSTOS_PG_SECRETS")
    if port and secrets and Path(secrets, "scram.pw").exists():
        ca = os.environ.get("CUSTOS_PG_CA_FILE") or ""
        yield PostgresPeer(
            host=os.environ.get("CUSTOS_IT_PG_HOST", "127.0.0.1"), port=int(port), secrets=Path(secrets),
            bindir=Path(os.environ.get("CUSTOS_PG_BINDIR", "/usr/lib/postgresql/15/bin")),
            ssl=bool(ca) and Path(ca).exists(), ca_file=Path(ca) if ca else None)
        return
    rundir = Path(tempfile.mkdtemp(prefix="custos-e2e-pg-"))
    port_n = free_port()
    env = {**os.environ, "CUSTOS_PG_SSL": "1"}
    started = subprocess.run(
        ["bash", "-c", 'set -e; . "$1"; pg_start "$2" "$3"', "pg_start", str(COMMON_SH), str(rundir), str(port_n)],
        capture_output=True, text=True, timeout=300, env=env)
    if started.returncode != 0:
        shutil.rmtree(rundir, ignore_errors=True)
        pytest.fail(f"pg_start failed:\n{started.stdout}\n{started.stderr}")
    values = dict(line.split("=", 1) for line in (rundir / "pg.env").read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    ca = values.get("CUSTOS_PG_CA_FILE", "")
    try:
        yield PostgresPeer(host="127.0.0.1", port=port_n, secrets=Path(values["CUSTOS_PG_SECRETS"]),
                           bindir=Path(values["CUSTOS_PG_BINDIR"]), ssl=bool(ca), ca_file=Path(ca) if ca else None)
    finally:
        subprocess.run(["bash", "-c", '. "$1"; pg_stop "$2"', "pg_stop", str(COMMON_SH), str(rundir)],
                       capture_output=True, text=True, timeout=120)
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def direct(pg):
    """A direct connection to PostgreSQL (not through Custos), to check data state."""
    conns = []

    def connect(role: str = "scram", dbname: str = "appdb", **kw) -> psycopg.Connection:
        conn = psycopg.connect(pg.direct_dsn(role, dbname), autocommit=True, **kw)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.close()


# --------------------------------------------------------------------------
# the OIDC issuer


@pytest.fixture(scope="session")
def issuer(tmp_path_factory):
    server = oidc_issuer.start_server(tmp_path_factory.mktemp("oidc") / "state")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mint(issuer):
    """mint(**kw) -> token; defaults: sub agent-1, email agent@example.com, groups [agents], aud custos."""

    def _mint(**kw) -> str:
        kw.setdefault("sub", "agent-1")
        kw.setdefault("email", "agent@example.com")
        kw.setdefault("groups", ["agents"])
        return oidc_issuer.mint_token(issuer.state, **kw)

    return _mint


@pytest.fixture
def token(mint):
    return mint()


# --------------------------------------------------------------------------
# gateways


def base_config(pg: PostgresPeer, issuer_url: str) -> dict:
    scram = {"host": pg.host, "port": pg.port, "database": "appdb", "user": "custos_scram",
             "password_file": "secrets/scram.pw", "sslmode": "disable", "allow_groups": ["agents", "dba"]}
    connections = {
        "appdb": scram,
        "pgbench": {**scram, "database": "pgbench"},
        "appdb_md5": {**scram, "user": "custos_md5", "password_file": "secrets/md5.pw"},
        "appdb_plain": {**scram, "user": "custos_plain", "password_file": "secrets/plain.pw"},
        "appdb_env": {**{k: v for k, v in scram.items() if k != "password_file"}, "password_env": "CUSTOS_E2E_SCRAM_PW"},
        "dba_only": {**scram, "allow_groups": ["dba"]},
        "backend_down": {**scram, "port": closed_port()},
        "bad_credential": {**scram, "password_file": "secrets/wrong.pw"},
    }
    if pg.ssl:
        connections["appdb_require"] = {**scram, "sslmode": "require"}
        connections["appdb_verify"] = {**scram, "sslmode": "verify-full", "ca_file": "secrets/pg-ca.crt"}
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "allow_cleartext_on_loopback": True,
                   "max_message_size": 1048576, "startup_timeout": "10s"},
        "identity": {"clock_skew": "5s", "end_session_on_expiry": True, "jwks_refresh_min_interval": "1s",
                     "issuers": [{"issuer": issuer_url, "audience": "custos", "algorithms": ["RS256", "ES256"],
                                  "groups_claim": "groups"}]},
        "connections": connections,
        "recording": {"store": "custos.sqlite", "mode": "write-ahead"},
        # Permissive on purpose: the spine's suites exercise the protocol, not the policy
        # (e2e/test_policy.py starts gateways with strict policies of its own).
        "policy": {"rules": [
            {"name": "e2e-allow-flagged", "match": {"groups": ["agents", "dba"],
             "flags": ["destructive", "privileged", "opaque", "unparseable"]}, "action": "allow"},
            {"name": "e2e-allow", "match": {"groups": ["agents", "dba"]}, "action": "allow"},
        ]},
        "logging": {"level": "info"},
    }


class Launcher:
    """Writes a config into a fresh folder (with the secrets next to it) and starts custos serve."""

    counter = itertools.count(1)

    def __init__(self, tmp_path_factory, pg: PostgresPeer, issuer_url: str):
        self.tmp_path_factory = tmp_path_factory
        self.pg = pg
        self.issuer_url = issuer_url

    def prepare(self, overrides: dict | None = None, name: str = "gw") -> Gateway:
        directory = self.tmp_path_factory.mktemp(f"{name}{next(self.counter)}")
        copy_secrets(self.pg.secrets, directory / "secrets")
        config = deep_merge(base_config(self.pg, self.issuer_url), overrides or {})
        return Gateway(directory=directory, config=config)

    def start(self, overrides: dict | None = None, name: str = "gw") -> Gateway:
        gw = self.prepare(overrides, name)
        os.environ["CUSTOS_E2E_SCRAM_PW"] = self.pg.password("scram")
        return gw.start()


@pytest.fixture(scope="session")
def launcher(tmp_path_factory, pg, issuer):
    return Launcher(tmp_path_factory, pg, issuer.url)


def _stop_checked(gw: Gateway) -> None:
    rc = gw.stop(timeout=10)
    if rc != 0:
        raise GatewayError(f"custos serve exited {rc} after SIGTERM (expected 0):\n{gw.log()[-3000:]}")


@pytest.fixture(scope="session")
def gateway(launcher):
    """The shared gateway most tests use (default config)."""
    gw = launcher.start(name="shared")
    yield gw
    _stop_checked(gw)


@pytest.fixture
def start_gateway(launcher):
    """start_gateway(overrides) -> a gateway of its own, stopped (exit 0 asserted) after the test."""
    started: list[Gateway] = []

    def _start(overrides: dict | None = None) -> Gateway:
        gw = launcher.start(overrides, name="own")
        started.append(gw)
        return gw

    yield _start
    errors = []
    for gw in started:
        try:
            _stop_checked(gw)
        except GatewayError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors))


_app_counter = itertools.count(1)


@pytest.fixture
def app(request):
    """A unique application_name for this test (PostgreSQL keeps 63 bytes)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    return f"e2e{os.getpid() % 1000}-{next(_app_counter)}-{name}"
