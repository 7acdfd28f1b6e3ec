"""A bad config is refused at start (non-zero exit, the key named on stderr); SIGTERM stops a
running gateway cleanly."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from custos_e2e import custos_bin


BAD_CONFIGS = [
    ("port_out_of_range", {"listen": {"port": 70000}}, "listen.port"),
    ("port_not_a_number", {"listen": {"port": "six"}}, "listen.port"),
    ("backend_port_bad", {"connections": {"appdb": {"port": 0}}}, "connections.appdb.port"),
    ("inline_password", {"connections": {"appdb": {"password": "hunter2"}}}, "connections.appdb.password"),
    ("http_issuer_not_loopback",
     {"identity": {"issuers": [{"issuer": "http://idp.example.com", "audience": "custos"}]}},
     "identity.issuers[0].issuer"),
    ("unknown_top_level_key", {"bogus": 1}, "bogus"),
    ("unknown_nested_key", {"listen": {"allow_cleartext": True}}, "listen.allow_cleartext"),
    ("hmac_algorithm",
     {"identity": {"issuers": [{"issuer": "http://127.0.0.1:9", "audience": "custos", "algorithms": ["HS256"]}]}},
     "identity.issuers[0].algorithms"),
    ("bad_sslmode", {"connections": {"appdb": {"sslmode": "prefer"}}}, "connections.appdb.sslmode"),
    ("verify_full_without_ca", {"connections": {"appdb": {"sslmode": "verify-full"}}}, "connections.appdb.ca_file"),
    ("bad_recording_mode", {"recording": {"mode": "sometimes"}}, "recording.mode"),
    ("no_connections", {"connections": {}}, "connections"),
]


@pytest.mark.parametrize("case,overrides,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_refused_naming_the_key(launcher, case, overrides, key):
    gw = launcher.prepare(overrides, name="badcfg")
    if case == "no_connections":
        gw.config["connections"] = {}
    gw.write_config()
    try:
        result = subprocess.run([str(custos_bin()), "serve", "--config", str(gw.config_path)],
                                capture_output=True, text=True, timeout=10, cwd=gw.directory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"custos serve accepted a bad config ({case}) and kept running")
    assert result.returncode != 0
    assert key in result.stderr, result.stderr
    assert "listening on" not in result.stderr


def test_config_not_yaml(launcher):
    gw = launcher.prepare(name="badcfg")
    gw.config_path.write_text("listen: [unclosed\n")
    result = subprocess.run([str(custos_bin()), "serve", "--config", str(gw.config_path)],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "config" in result.stderr


def test_missing_config_file(tmp_path):
    result = subprocess.run([str(custos_bin()), "serve", "--config", str(tmp_path / "absent.yaml")],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "absent.yaml" in result.stderr


def test_config_from_environment_and_relative_paths(launcher, token, app, tmp_path):
    gw = launcher.start(name="envcfg")
    try:
        with psycopg.connect(gw.dsn(token, app=app)) as conn:
            conn.execute("select 1")
        gw.session_by_app(app)
        # $CUSTOS_CONFIG, run from another folder: the store path still resolves next to the config
        result = subprocess.run([str(custos_bin()), "sessions", "list", "--json"], capture_output=True, text=True,
                                timeout=10, cwd=tmp_path, env={"CUSTOS_CONFIG": str(gw.config_path), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        assert app in result.stdout
        assert (gw.directory / "custos.sqlite").exists()
    finally:
        assert gw.stop() == 0


def test_sigterm_with_open_session_exits_zero_and_closes_the_record(launcher, token, app):
    gw = launcher.start(name="sigterm")
    conn = psycopg.connect(gw.dsn(token, app=app), autocommit=True)
    try:
        conn.execute("select 1")
        started = time.monotonic()
        rc = gw.stop(timeout=10)
        assert rc == 0, gw.log()[-2000:]
        assert time.monotonic() - started < 10
    finally:
        conn.close()
    record = [s for s in gw.sessions() if s["application_name"] == app]
    assert len(record) == 1
    assert record[0]["outcome"] != "open", record

