"""Evidence (docs/evidence.md): signed checkpoints, `custos verify` on a store and on a bundle,
evidence bundles that verify offline and leak nothing of other sessions, and retention.

Each mutation here is one representative of its kind; the exhaustive mutation suite lives
elsewhere. Where `e2e/evidence_verify.py` (the independent Python verifier) is present, its
verdict must agree with `custos verify` on every case."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos_e2e import (
    HEX64_RE, Gateway, GatewayError, canonical_json, custos_bin, event_hash, http_json, read_events, sha256_hex, wait_until,
)

ADMIN_RE = re.compile(r"custos: admin API listening on 127\.0\.0\.1:(\d+)")
ADMIN = {"host": "127.0.0.1", "port": 0, "roles": {"approver": ["dba"], "auditor": ["auditors"], "admin": ["platform"]}}


# --------------------------------------------------------------------------
# helpers


def stamp(dt: datetime) -> str:
    """RFC 3339 UTC with six fractional digits, as the store writes `at`."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def public_hex(seed_hex: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def other_public_key() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def checkpoint_message(c: dict) -> bytes:
    return "\n".join(["custos.checkpoint.v1", c["writer_id"], str(c["seq"]), c["hash"], c["at"]]).encode()


def read_checkpoints(store: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT writer_id, seq, hash, at, public_key, signature FROM checkpoints ORDER BY writer_id, seq")]
    finally:
        conn.close()


def copy_store(src: Path, dst: Path) -> Path:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=10)
    target = sqlite3.connect(dst)
    source.backup(target)
    source.close()
    target.close()
    return dst


def mutate(src: Path, dst: Path, *statements: tuple[str, tuple]) -> Path:
    copy_store(src, dst)
    conn = sqlite3.connect(dst)
    for sql, args in statements:
        conn.execute(sql, args)
    conn.commit()
    conn.close()
    return dst


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "CUSTOS_CONFIG"}


def custos(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(custos_bin()), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL)


@dataclass
class Verdict:
    rc: int
    data: dict | None
    stdout: str
    stderr: str

    @property
    def problem(self) -> dict | None:
        return (self.data or {}).get("problem")

    @property
    def writer(self) -> dict:
        writers = (self.data or {}).get("writers") or []
        assert len(writers) == 1, f"expected one writer in {self.data}"
        return writers[0]

    def __repr__(self) -> str:
        return f"Verdict(rc={self.rc}, data={json.dumps(self.data)[:1500]}, stderr={self.stderr[-800:]!r})"


def verify(gw: Gateway, *args: str, config: bool = True, cwd: Path | None = None) -> Verdict:
    command = ["verify", *map(str, args), "--json"]
    if config:
        command += ["--config", str(gw.config_path)]
    done = custos(*command, cwd=cwd or gw.directory)
    data = None
    if done.stdout.strip():
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"custos {' '.join(command)} --json printed no JSON (rc {done.returncode}):\n"
                                 f"{done.stdout[:2000]}\n{done.stderr[-2000:]}")
    return Verdict(done.returncode, data, done.stdout, done.stderr)


def verify_bundle(bundle: Path, *args: str, cwd: Path) -> Verdict:
    done = custos("verify", "--bundle", bundle, *args, "--json", cwd=cwd)
    data = None
    if done.stdout.strip():
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"verify --bundle printed no JSON (rc {done.returncode}):\n{done.stdout[:2000]}\n{done.stderr}")
    return Verdict(done.returncode, data, done.stdout, done.stderr)


def assert_intact(v: Verdict) -> None:
    assert v.rc == 0, v
    assert v.data is not None and v.data["ok"] is True and v.data["problem"] is None, v
    for w in v.data["writers"]:
        assert w["problem"] is None, v
        assert {"writer_id", "events", "first_seq", "last_seq", "checkpoints", "signed_through", "unsigned_tail",
                "pruned", "withheld", "problem"} <= set(w), w


def assert_problem(v: Verdict, kind: str, seq: int | tuple | None = None, session_id: str | None = None) -> dict:
    assert v.rc == 1, v
    assert v.data is not None and v.data["ok"] is False, v
    problem = v.problem
    assert isinstance(problem, dict), v
    assert {"kind", "writer_id", "seq", "session_id", "detail"} <= set(problem), problem
    assert problem["kind"] == kind, f"expected kind {kind}, got {problem}"
    if isinstance(seq, tuple):
        assert problem["seq"] in seq, f"expected seq in {seq}, got {problem}"
    elif seq is not None:
        assert problem["seq"] == seq, f"expected seq {seq}, got {problem}"
    if session_id is not None:
        assert problem["session_id"] == session_id, problem
    # the per-writer entry names the same problem
    named = [w["problem"] for w in v.data["writers"] if w.get("problem")]
    assert named and named[0]["kind"] == kind, v
    return problem


# ---- the independent Python verifier (e2e/evidence_verify.py), when present


def python_verifier():
    try:
        import evidence_verify  # noqa: PLC0415
    except ImportError:
        return None
    return evidence_verify


def py_store(path: Path, public_key: str) -> dict | None:
    module = python_verifier()
    return None if module is None else module.verify_store(str(path), public_key)


def py_bundle(path: Path, public_key: str | None = None) -> dict | None:
    module = python_verifier()
    return None if module is None else module.verify_bundle(str(path), public_key)


def assert_agree(py: dict | None, v: Verdict) -> None:
    """The Python verifier reaches the same verdict (ok, and the problem's kind and seq)."""
    if py is None:
        return
    assert bool(py["ok"]) == bool(v.data["ok"]), f"python verifier says {py}, custos verify says {v}"
    if not v.data["ok"]:
        assert py["problem"]["kind"] == v.problem["kind"], f"python {py['problem']} vs custos {v.problem}"
        assert py["problem"]["seq"] == v.problem["seq"], f"python {py['problem']} vs custos {v.problem}"


# ---- the admin API


def admin_url(gw: Gateway) -> str:
    match = wait_until(lambda: ADMIN_RE.search(gw.log()), 15, what="'custos: admin API listening on' in the log")
    return f"http://127.0.0.1:{match.group(1)}"


def http_get(url: str, token: str | None = None) -> tuple[int, object]:
    return http_json(url, token)


def stop_checked(gw: Gateway) -> None:
    rc = gw.stop(timeout=15)
    if rc != 0:
        raise GatewayError(f"custos serve exited {rc} after SIGTERM (expected 0):\n{gw.log()[-3000:]}")


def restart(gw: Gateway) -> None:
    """Start again in the same folder; the old log is set aside (Gateway.start reads the port from it)."""
    n = 1
    while (gw.directory / f"custos.log.{n}").exists():
        n += 1
    if gw.log_path.exists():
        gw.log_path.rename(gw.directory / f"custos.log.{n}")
    gw.start()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_session(gw: Gateway, token: str, app: str, statements: list[str], dbname: str = "appdb") -> str:
    with psycopg.connect(gw.dsn(token, dbname=dbname, app=app), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql).fetchall()
    return gw.session_by_app(app)["id"]


# --------------------------------------------------------------------------
# the recorded store most tests read (stopped cleanly before they run)


@dataclass
class Recorded:
    gw: Gateway
    ids: dict[str, str]
    markers: dict[str, str]
    key_api: tuple[int, object]
    pub: str
    before_c: str
    after_c: str


@pytest.fixture(scope="module")
def recorded(launcher, mint) -> Recorded:
    gw = launcher.start({"recording": {"checkpoint_every": 7, "checkpoint_interval": "60s"}, "admin": ADMIN},
                        name="evidence")
    try:
        tag = uuid.uuid4().hex[:10]
        markers = {name: f"{name}{tag}" for name in ("alpha", "bravo", "charlie", "delta")}
        ids: dict[str, str] = {}
        apps = {name: f"e2e-ev-{name}-{tag}" for name in markers}
        tokens = {name: mint(sub=f"ev-{name}", email=f"ev-{name}@example.com", groups=["agents"]) for name in markers}

        # alpha and bravo run at the same time, so that bravo's events sit inside alpha's exported range
        with psycopg.connect(gw.dsn(tokens["alpha"], app=apps["alpha"]), autocommit=True) as a, \
                psycopg.connect(gw.dsn(tokens["bravo"], app=apps["bravo"]), autocommit=True) as b:
            for i in range(3):
                a.execute(f"SELECT '{markers['alpha']} {i}' AS v").fetchall()
                b.execute(f"SELECT '{markers['bravo']} {i}' AS v").fetchall()
            a.execute("SELECT count(*) FROM customers").fetchall()
        ids["alpha"] = gw.session_by_app(apps["alpha"])["id"]
        ids["bravo"] = gw.session_by_app(apps["bravo"])["id"]
        time.sleep(0.2)
        before_c = stamp(datetime.now(timezone.utc))
        time.sleep(0.2)
        ids["charlie"] = run_session(gw, tokens["charlie"], apps["charlie"],
                                     [f"SELECT '{markers['charlie']} {i}' AS v" for i in range(3)])
        time.sleep(0.2)
        after_c = stamp(datetime.now(timezone.utc))
        time.sleep(0.2)
        ids["delta"] = run_session(gw, tokens["delta"], apps["delta"],
                                   [f"SELECT '{markers['delta']} {i}' AS v" for i in range(3)])

        key_api = http_get(admin_url(gw) + "/api/v1/evidence/key")
    except BaseException:
        gw.stop()
        raise
    stop_checked(gw)
    seed = (gw.directory / "custos-signing.key").read_text().strip() if (gw.directory / "custos-signing.key").exists() else ""
    pub = public_hex(seed) if HEX64_RE.match(seed) else ""
    return Recorded(gw, ids, markers, key_api, pub, before_c, after_c)


def events_of(store: Path) -> list[dict]:
    return read_events(store)


# --------------------------------------------------------------------------
# checkpoints and the signing key


def test_clean_stop_leaves_checkpoints_signing_the_last_event(recorded):
    events = events_of(recorded.gw.store_path)
    checkpoints = read_checkpoints(recorded.gw.store_path)
    assert events and checkpoints, "a clean stop must leave checkpoints"
    writers = {e["writer_id"] for e in events}
    assert len(writers) == 1
    last = events[-1]
    assert checkpoints[-1]["seq"] == last["seq"] and checkpoints[-1]["hash"] == last["hash"], \
        f"the last checkpoint {checkpoints[-1]} must sign the last event #{last['seq']}"
    # every 7 events plus the one at shutdown
    assert len(checkpoints) >= len(events) // 7, (len(checkpoints), len(events))
    by_seq = {e["seq"]: e for e in events}
    for c in checkpoints:
        assert c["writer_id"] == last["writer_id"]
        assert c["public_key"] == recorded.pub, c
        assert re.fullmatch(r"[0-9a-f]{128}", c["signature"]), c
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", c["at"]), c
        assert by_seq[c["seq"]]["hash"] == c["hash"], c
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(recorded.pub)).verify(
            bytes.fromhex(c["signature"]), checkpoint_message(c))


def test_signing_key_file_is_private_and_its_public_key_was_announced(recorded):
    path = recorded.gw.directory / "custos-signing.key"
    assert path.exists(), "keys.signing_file defaults to custos-signing.key beside the store"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert HEX64_RE.match(path.read_text().strip())
    announced = [line for line in recorded.gw.log().splitlines() if recorded.pub in line]
    assert announced, "the first start prints the public key"
    assert any("warning" in line.lower() for line in announced), announced
    status, body = recorded.key_api
    assert status == 200, (status, body)
    writer = events_of(recorded.gw.store_path)[0]["writer_id"]
    assert body == {"algorithm": "Ed25519", "public_key": recorded.pub, "writer_id": writer}, body


def test_verify_passes_on_the_intact_store_and_the_python_verifier_agrees(recorded):
    events = events_of(recorded.gw.store_path)
    checkpoints = read_checkpoints(recorded.gw.store_path)
    v = verify(recorded.gw)
    assert_intact(v)
    w = v.writer
    assert (w["writer_id"], w["events"], w["first_seq"], w["last_seq"]) == (events[0]["writer_id"], len(events), 1, events[-1]["seq"])
    assert (w["checkpoints"], w["signed_through"], w["unsigned_tail"], w["pruned"]) == (len(checkpoints), events[-1]["seq"], 0, 0)
    assert_intact(verify(recorded.gw, "--require-signed"))
    assert_intact(verify(recorded.gw, "--public-key", recorded.pub))
    # plain text output: exit status alone
    done = custos("verify", "--config", recorded.gw.config_path, cwd=recorded.gw.directory)
    assert done.returncode == 0 and done.stdout.strip(), done
    py = py_store(recorded.gw.store_path, recorded.pub)
    assert_agree(py, v)
    if py is not None:
        assert py.get("unsigned_tail", 0) == 0, py


def test_verify_against_another_key_or_without_a_store(recorded, tmp_path):
    v = verify(recorded.gw, "--public-key", other_public_key())
    assert_problem(v, "signature_invalid")
    assert_agree(py_store(recorded.gw.store_path, other_public_key()), v)
    missing = verify(recorded.gw, "--store", tmp_path / "nope.sqlite", "--public-key", recorded.pub)
    assert missing.rc == 2, missing


def _swap(seq: int) -> list[tuple[str, tuple]]:
    return [("UPDATE events SET seq = -1 WHERE seq = ?", (seq,)),
            ("UPDATE events SET seq = ? WHERE seq = ?", (seq, seq + 1)),
            ("UPDATE events SET seq = ? WHERE seq = -1", (seq + 1,))]


def _rewrite_from(store: Path, seq: int) -> None:
    """Change event seq's payload and re-hash it and every later event: a consistent, rewritten chain."""
    conn = sqlite3.connect(store)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM events WHERE seq >= ? ORDER BY seq", (seq - 1,))]
    prev = rows[0]["hash"]
    for row in rows[1:]:
        if row["seq"] == seq:
            payload = json.loads(row["payload"])
            payload["text"] = payload["text"].replace("SELECT", "select")
            row["payload"] = canonical_json(payload)
            row["payload_hash"] = sha256_hex(row["payload"].encode())
        row["prev_hash"] = prev
        row["hash"] = event_hash(row["writer_id"], row["seq"], row["at"], row["session_id"], row["kind"],
                                 row["payload_hash"], row["prev_hash"])
        conn.execute("UPDATE events SET payload = ?, payload_hash = ?, prev_hash = ?, hash = ? WHERE writer_id = ? AND seq = ?",
                     (row["payload"], row["payload_hash"], row["prev_hash"], row["hash"], row["writer_id"], row["seq"]))
        prev = row["hash"]
    conn.commit()
    conn.close()


def test_each_kind_of_store_mutation_is_named(recorded, tmp_path):
    store = recorded.gw.store_path
    events = events_of(store)
    checkpoints = read_checkpoints(store)
    n = events[-1]["seq"]
    # a statement of charlie's session, in the middle, with a checkpoint after it
    target = next(e for e in events if e["kind"] == "statement" and e["session_id"] == recorded.ids["charlie"])
    k = target["seq"]
    assert 1 < k < n - 3
    payload = target["payload"].replace(recorded.markers["charlie"], recorded.markers["charlie"].upper())
    assert payload != target["payload"]
    first_cp_after = min(c["seq"] for c in checkpoints if c["seq"] >= k)
    last_cp = checkpoints[-1]

    cases = {
        "payload": (("UPDATE events SET payload = ? WHERE seq = ?", (payload, k)),),
        "header": (("UPDATE events SET at = '2000-01-01T00:00:00.000000Z' WHERE seq = ?", (k,)),),
        "null-payload": (("UPDATE events SET payload = NULL WHERE seq = ?", (k,)),),
        "missing": (("DELETE FROM events WHERE seq = ?", (k,)),),
        "reordered": tuple(_swap(k)),
        "truncated": (("DELETE FROM events WHERE seq >= ?", (n - 1,)),),
        "signature": (("UPDATE checkpoints SET signature = ? WHERE seq = ?",
                       (("0" if last_cp["signature"][0] != "0" else "1") + last_cp["signature"][1:], last_cp["seq"])),),
    }
    expected = {
        "payload": ("modified", k), "header": ("modified", k), "null-payload": ("modified", k), "missing": ("missing", k),
        "reordered": ("reordered", k), "truncated": ("truncated", n - 1), "signature": ("signature_invalid", last_cp["seq"]),
    }
    for name, statements in cases.items():
        copy = mutate(store, tmp_path / f"{name}.sqlite", *statements)
        v = verify(recorded.gw, "--store", copy, "--public-key", recorded.pub)
        kind, seq = expected[name]
        problem = assert_problem(v, kind, seq)
        assert problem["writer_id"] == target["writer_id"], problem
        if name in ("payload", "header", "null-payload"):   # a missing event names no session
            assert problem["session_id"] == recorded.ids["charlie"], problem
        assert_agree(py_store(copy, recorded.pub), v)

    # a consistently rewritten chain: every link holds, but a checkpoint signs the old hash
    copy = copy_store(store, tmp_path / "rewritten.sqlite")
    _rewrite_from(copy, k)
    v = verify(recorded.gw, "--store", copy, "--public-key", recorded.pub)
    assert_problem(v, "modified", tuple(range(k, first_cp_after + 1)))
    assert_agree(py_store(copy, recorded.pub), v)


def test_since_and_until_limit_the_check(recorded, tmp_path):
    store = recorded.gw.store_path
    events = events_of(store)
    target = next(e for e in events if e["kind"] == "statement" and e["session_id"] == recorded.ids["charlie"])
    k = target["seq"]
    by_seq = {e["seq"]: e for e in events}
    copy = mutate(store, tmp_path / "modified.sqlite",
                  ("UPDATE events SET payload = ? WHERE seq = ?", (target["payload"].replace("SELECT", "select"), k)))
    base = ("--store", copy, "--public-key", recorded.pub)
    assert_problem(verify(recorded.gw, *base), "modified", k)
    assert_problem(verify(recorded.gw, *base, "--since", "1h"), "modified", k)

    after = verify(recorded.gw, *base, "--since", by_seq[k + 1]["at"])
    assert_intact(after)
    assert after.writer["first_seq"] > k and after.writer["last_seq"] == events[-1]["seq"], after
    assert after.writer["events"] < len(events), after

    before = verify(recorded.gw, *base, "--until", by_seq[k - 1]["at"])
    assert_intact(before)
    assert before.writer["last_seq"] < k, before

    window = verify(recorded.gw, *base, "--since", recorded.before_c, "--until", recorded.after_c)
    assert_problem(window, "modified", k)
    # a window wholly after the change, ending before the store does: no truncation check
    tail = [e for e in events if e["seq"] > k + 1]
    later = verify(recorded.gw, *base, "--since", tail[0]["at"], "--until", tail[len(tail) // 2]["at"])
    assert_intact(later)


# --------------------------------------------------------------------------
# kill -9: an unsigned tail


def test_kill_9_leaves_an_unsigned_tail_that_the_next_clean_stop_signs(launcher, mint):
    gw = launcher.prepare({"recording": {"checkpoint_every": 100000, "checkpoint_interval": "1h"},
                           "keys": {"signing_file": "own-signing.key"}}, name="kill9")
    os.environ["CUSTOS_E2E_SCRAM_PW"] = launcher.pg.password("scram")
    gw.start()
    try:
        key_file = gw.directory / "own-signing.key"
        assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not (gw.directory / "custos-signing.key").exists(), "keys.signing_file names the key file"
        pub = public_hex(key_file.read_text().strip())
        assert pub in gw.log()
        # a first clean stop signs what ran so far; the killed run then adds an unsigned tail
        run_session(gw, mint(), "e2e-ev-kill9-first", ["SELECT 1"])
        stop_checked(gw)
        signed = read_checkpoints(gw.store_path)[-1]["seq"]
        restart(gw)

        stop = threading.Event()
        ran = [0]

        def traffic() -> None:
            try:
                with psycopg.connect(gw.dsn(mint(), app="e2e-ev-kill9"), autocommit=True) as conn:
                    while not stop.is_set():
                        conn.execute("SELECT 1").fetchall()
                        ran[0] += 1
            except psycopg.Error:
                pass

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        wait_until(lambda: ran[0] >= 20, 15, what="traffic through the gateway")
        gw.proc.kill()          # SIGKILL, mid-traffic
        gw.proc.wait(10)
        gw.proc = None
        stop.set()
        thread.join(15)

        v = verify(gw)
        assert_intact(v)
        assert v.writer["unsigned_tail"] > 0, v
        assert v.writer["signed_through"] == signed, v
        assert v.writer["signed_through"] + v.writer["unsigned_tail"] == v.writer["last_seq"], v
        py = py_store(gw.store_path, pub)
        assert_agree(py, v)
        if py is not None:
            assert py["unsigned_tail"] == v.writer["unsigned_tail"], py
        strict = verify(gw, "--require-signed")
        assert strict.rc == 1, strict

        restart(gw)
    finally:
        if gw.alive():
            stop_checked(gw)
    v = verify(gw, "--require-signed")
    assert_intact(v)
    assert v.writer["unsigned_tail"] == 0, v
    assert {c["public_key"] for c in read_checkpoints(gw.store_path)} == {pub}


# --------------------------------------------------------------------------
# evidence bundles


def export(gw: Gateway, out: Path, *scope: str, cwd: Path | None = None, config: Path | None = None) -> None:
    done = custos("evidence", "export", *scope, "-o", out, "--config", config or gw.config_path, cwd=cwd or gw.directory)
    assert done.returncode == 0, f"evidence export exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def alpha_bundle(recorded, tmp_path_factory) -> Path:
    """alpha's bundle, exported from a copy of the gateway's folder that is then deleted."""
    base = tmp_path_factory.mktemp("bundle-alpha")
    offline = base / "gateway"
    shutil.copytree(recorded.gw.directory, offline)
    bundle = base / "bundle"
    export(recorded.gw, bundle, "--session", recorded.ids["alpha"], cwd=offline, config=offline / "custos.yaml")
    shutil.rmtree(offline)
    return bundle


def test_session_bundle_verifies_offline(recorded, alpha_bundle, tmp_path):
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    for name in ("events.jsonl", "checkpoints.jsonl", "public-key.txt", "policies.jsonl", "manifest.json", "README.md"):
        assert (alpha_bundle / name).exists(), name
    v = verify_bundle(alpha_bundle, cwd=nowhere)
    assert_intact(v)
    assert_intact(verify_bundle(alpha_bundle, "--public-key", recorded.pub, cwd=nowhere))
    assert_intact(verify_bundle(alpha_bundle, "--require-signed", cwd=nowhere))
    assert_agree(py_bundle(alpha_bundle), v)
    assert_agree(py_bundle(alpha_bundle, recorded.pub), v)
    wrong = verify_bundle(alpha_bundle, "--public-key", other_public_key(), cwd=nowhere)
    assert_problem(wrong, "signature_invalid")
    assert verify_bundle(tmp_path / "no-such-bundle", cwd=nowhere).rc == 2


def test_session_bundle_content_and_scope(recorded, alpha_bundle):
    store_events = {e["seq"]: e for e in events_of(recorded.gw.store_path)}
    lines = read_jsonl(alpha_bundle / "events.jsonl")
    alpha = recorded.ids["alpha"]
    assert lines
    keys = {"writer_id", "seq", "at", "session_id", "kind", "payload", "payload_hash", "prev_hash", "hash"}
    seqs = [e["seq"] for e in lines]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events in chain order without gaps"
    in_scope = [e for e in lines if e["session_id"] == alpha]
    assert in_scope[0]["seq"] == seqs[0], "the range starts at the session's first event"
    assert [e["seq"] for e in in_scope] == [e["seq"] for e in store_events.values() if e["session_id"] == alpha]
    for e in lines:
        assert set(e) == keys, e
        stored = store_events[e["seq"]]
        assert {k: e[k] for k in keys - {"payload"}} == {k: stored[k] for k in keys - {"payload"}}
        if e["session_id"] == alpha:
            assert e["payload"] == stored["payload"], "in scope: the stored payload text"
        else:
            assert e["payload"] is None, f"out of scope but not withheld: {e}"
    assert any(e["session_id"] == recorded.ids["bravo"] for e in lines), "bravo's events interleave alpha's"

    checkpoints = read_jsonl(alpha_bundle / "checkpoints.jsonl")
    assert checkpoints and checkpoints[-1]["seq"] == seqs[-1], "the range ends at a checkpoint"
    assert checkpoints[-1]["seq"] >= in_scope[-1]["seq"]
    store_cps = {c["seq"]: c for c in read_checkpoints(recorded.gw.store_path)}
    for c in checkpoints:
        assert c == store_cps[c["seq"]], c
        assert seqs[0] <= c["seq"] <= seqs[-1]
    first_cp_after = min(s for s in store_cps if s >= in_scope[-1]["seq"])
    assert seqs[-1] == first_cp_after, "the range runs to the first checkpoint at or after the last in-scope event"
    assert (alpha_bundle / "public-key.txt").read_text().strip() == recorded.pub

    manifest = json.loads((alpha_bundle / "manifest.json").read_text())
    assert manifest["format"] == "custos.bundle.v1"
    assert {"created_at", "scope", "writers", "events", "in_scope"} <= set(manifest), manifest
    assert manifest["events"] == len(lines) and manifest["in_scope"] == len(in_scope), manifest
    assert alpha in json.dumps(manifest["scope"]), manifest

    # nothing of the other sessions' statements leaves, anywhere in the bundle
    for name in ("bravo", "charlie", "delta"):
        marker = recorded.markers[name].encode()
        for path in alpha_bundle.rglob("*"):
            if path.is_file():
                assert marker not in path.read_bytes(), f"{name}'s statement text is in {path.name}"
    assert recorded.markers["alpha"].encode() in (alpha_bundle / "events.jsonl").read_bytes()


def test_bundle_policies_hash_to_their_versions(recorded, alpha_bundle):
    policies = read_jsonl(alpha_bundle / "policies.jsonl")
    assert policies
    for p in policies:
        assert set(p) == {"version", "policy"}, p
        assert isinstance(p["policy"], str)
        assert sha256_hex(p["policy"].encode()) == p["version"], p
        assert canonical_json(json.loads(p["policy"])) == p["policy"]
    named = set()
    for e in read_jsonl(alpha_bundle / "events.jsonl"):
        if e["payload"] is not None:
            decision = json.loads(e["payload"]).get("decision")
            if isinstance(decision, dict) and decision.get("policy"):
                named.add(decision["policy"])
    assert named and {p["version"] for p in policies} == named


def _bundle_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_lines(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_modified_bundles_fail_with_the_right_kind(recorded, alpha_bundle, tmp_path):
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    lines = read_jsonl(alpha_bundle / "events.jsonl")
    alpha = recorded.ids["alpha"]
    # an in-scope statement in the middle (not the first line, not the last)
    idx = next(i for i, e in enumerate(lines) if 0 < i < len(lines) - 2 and e["session_id"] == alpha and e["kind"] == "statement")
    seq = lines[idx]["seq"]

    def change_payload(raw: list[str]) -> list[str]:
        e = json.loads(raw[idx])
        e["payload"] = e["payload"].replace(recorded.markers["alpha"], recorded.markers["alpha"].upper(), 1)
        assert e["payload"] != lines[idx]["payload"]
        return raw[:idx] + [json.dumps(e)] + raw[idx + 1:]

    def delete_line(raw: list[str]) -> list[str]:
        return raw[:idx] + raw[idx + 1:]

    def swap_lines(raw: list[str]) -> list[str]:
        return raw[:idx] + [raw[idx + 1], raw[idx]] + raw[idx + 2:]

    def change_signature(raw: list[str]) -> list[str]:
        c = json.loads(raw[-1])
        c["signature"] = ("0" if c["signature"][0] != "0" else "1") + c["signature"][1:]
        return raw[:-1] + [json.dumps(c)]

    last_cp = read_jsonl(alpha_bundle / "checkpoints.jsonl")[-1]
    cases = [
        ("payload", "events.jsonl", change_payload, "modified", seq),
        ("deleted", "events.jsonl", delete_line, "missing", seq),
        ("swapped", "events.jsonl", swap_lines, "reordered", seq),
        ("signature", "checkpoints.jsonl", change_signature, "signature_invalid", last_cp["seq"]),
    ]
    for name, file, change, kind, expected_seq in cases:
        bundle = _bundle_copy(alpha_bundle, tmp_path / name)
        _rewrite_lines(bundle / file, change)
        v = verify_bundle(bundle, cwd=nowhere)
        assert_problem(v, kind, expected_seq)
        assert_agree(py_bundle(bundle), v)

    # an in-scope payload withheld, and a policy text changed: not intact either
    bundle = _bundle_copy(alpha_bundle, tmp_path / "withheld")
    _rewrite_lines(bundle / "events.jsonl",
                   lambda raw: raw[:idx] + [json.dumps({**json.loads(raw[idx]), "payload": None})] + raw[idx + 1:])
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1 and v.data["ok"] is False, v
    assert_agree(py_bundle(bundle), v)

    bundle = _bundle_copy(alpha_bundle, tmp_path / "policy")
    _rewrite_lines(bundle / "policies.jsonl",
                   lambda raw: [json.dumps({**json.loads(raw[0]), "policy": json.loads(raw[0])["policy"].replace("allow", "deny", 1)})]
                   + raw[1:])
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1 and v.data["ok"] is False, v

    # trimmed (the leading events, or the tail with its checkpoints) or re-scoped: the signed manifest says otherwise
    bundle = _bundle_copy(alpha_bundle, tmp_path / "trim-head")
    _rewrite_lines(bundle / "events.jsonl", lambda raw: raw[2:])
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1 and v.data["problem"]["kind"] == "missing", v
    assert py_bundle(bundle)["ok"] is False

    bundle = _bundle_copy(alpha_bundle, tmp_path / "trim-tail")
    _rewrite_lines(bundle / "events.jsonl", lambda raw: raw[:-3])
    _rewrite_lines(bundle / "checkpoints.jsonl", lambda raw: [])
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1 and v.data["problem"]["kind"] == "truncated", v
    assert py_bundle(bundle)["ok"] is False

    bundle = _bundle_copy(alpha_bundle, tmp_path / "empty-bundle")
    _rewrite_lines(bundle / "events.jsonl", lambda raw: [])
    _rewrite_lines(bundle / "checkpoints.jsonl", lambda raw: [])
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1, v
    assert py_bundle(bundle)["ok"] is False

    bundle = _bundle_copy(alpha_bundle, tmp_path / "rescoped")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["scope"] = {"session": recorded.ids["charlie"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    v = verify_bundle(bundle, cwd=nowhere)
    assert v.rc == 1 and v.data["problem"]["kind"] == "signature_invalid", v
    assert_agree(py_bundle(bundle), v)


def test_bundle_by_time_range(recorded, tmp_path):
    bundle = tmp_path / "bundle"
    export(recorded.gw, bundle, "--since", recorded.before_c, "--until", recorded.after_c)
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    v = verify_bundle(bundle, cwd=nowhere)
    assert_intact(v)
    assert_agree(py_bundle(bundle), v)
    lines = read_jsonl(bundle / "events.jsonl")
    charlie = recorded.ids["charlie"]
    with_payload = [e for e in lines if e["payload"] is not None]
    in_range = [e for e in lines if recorded.before_c <= e["at"] <= recorded.after_c]
    assert with_payload == in_range, "exactly the events in the time range keep their payload"
    assert {e["session_id"] for e in in_range} == {charlie}
    assert [e["seq"] for e in in_range] == [e["seq"] for e in events_of(recorded.gw.store_path) if e["session_id"] == charlie]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["in_scope"] == len(in_range) and manifest["events"] == len(lines), manifest
    for name in ("alpha", "bravo", "delta"):
        marker = recorded.markers[name].encode()
        for path in bundle.rglob("*"):
            if path.is_file():
                assert marker not in path.read_bytes(), f"{name}'s statement text is in {path.name}"


# --------------------------------------------------------------------------
# retention


def test_retention_prunes_old_payloads_and_the_chain_still_verifies(launcher, mint, tmp_path):
    gw = launcher.prepare({"recording": {"retention": "2s"}}, name="retention")
    os.environ["CUSTOS_E2E_SCRAM_PW"] = launcher.pg.password("scram")
    tag = uuid.uuid4().hex[:10]
    old_word, new_word = f"oldword{tag}", f"newword{tag}"
    token = mint(sub=f"ret-{tag}", email=f"ret-{tag}@example.com", groups=["agents"])
    gw.start()
    try:
        old_id = run_session(gw, token, f"e2e-ret-old-{tag}", [f"SELECT '{old_word}' AS w", "SELECT 2"])
    finally:
        stop_checked(gw)
    assert [s["id"] for s in gw.sessions("--text", old_word)] == [old_id], "found before retention"
    key_before = (gw.directory / "custos-signing.key").read_text()
    old_last = events_of(gw.store_path)[-1]
    time.sleep(max(0.0, (parse_time(old_last["at"]) + timedelta(seconds=2.5) - datetime.now(timezone.utc)).total_seconds()))

    restart(gw)                 # the sweep runs at start
    try:
        def swept():
            found = [e for e in events_of(gw.store_path) if e["kind"] == "retention" and e["payload"]
                     and json.loads(e["payload"])["through_seq"] >= old_last["seq"]]
            return found[-1] if found else None
        retention = wait_until(swept, 15, what="a retention event covering the old session")
        new_id = run_session(gw, token, f"e2e-ret-new-{tag}", [f"SELECT '{new_word}' AS w"])
    finally:
        stop_checked(gw)
    assert (gw.directory / "custos-signing.key").read_text() == key_before, "the signing key is kept across restarts"
    created = [line for line in gw.log().splitlines() if "created" in line.lower() and "signing" in line.lower()]
    assert not created, f"no new signing key on restart: {created}"

    events = events_of(gw.store_path)
    cut = json.loads(retention["payload"])
    assert set(cut) == {"before", "through_seq"}, cut
    assert parse_time(cut["before"]) > parse_time(old_last["at"])
    assert retention["session_id"] and retention["seq"] > cut["through_seq"]
    pruned = [e for e in events if e["payload"] is None]
    assert pruned, "old payloads are removed"
    for e in events:
        if e["seq"] <= old_last["seq"]:
            assert e["payload"] is None, f"old event kept its payload: {e}"
        if e["payload"] is None:
            assert parse_time(e["at"]) < parse_time(cut["before"]) and e["seq"] <= cut["through_seq"], e
    assert all(e["payload"] is not None for e in events if e["session_id"] == new_id)

    pub = public_hex(key_before.strip())
    v = verify(gw)
    assert_intact(v)
    assert v.writer["pruned"] == len(pruned), v
    assert_intact(verify(gw, "--require-signed"))
    assert_agree(py_store(gw.store_path, pub), v)

    assert gw.sessions("--text", old_word) == [], "retention removes the old text from the search index"
    assert [s["id"] for s in gw.sessions("--text", new_word)] == [new_id]
    [old] = [s for s in gw.sessions("--identity", f"ret-{tag}@example.com") if s["id"] == old_id]
    assert old["outcome"] == "closed" and old["statement_count"] == 2 and old["subject"] == f"ret-{tag}", old
    assert old["started_at"] and old["ended_at"]

    # a NULL payload no retention event covers is a modification
    newest = next(e for e in reversed(events) if e["session_id"] == new_id and e["kind"] == "statement")
    copy = mutate(gw.store_path, tmp_path / "unexplained-null.sqlite",
                  ("UPDATE events SET payload = NULL WHERE seq = ?", (newest["seq"],)))
    v = verify(gw, "--store", copy, "--public-key", pub)
    assert_problem(v, "modified", newest["seq"], session_id=new_id)
    assert_agree(py_store(copy, pub), v)
