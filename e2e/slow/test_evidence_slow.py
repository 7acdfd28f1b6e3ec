"""Slow evidence checks (scripts/evidence-check), against docs/evidence.md:

1. Tamper suite: a real store (several sessions, checkpoints every 25 events, a denial, a clean
   stop) copied and mutated a thousand times, one random mutation per copy (a payload character,
   payload_hash, prev_hash, hash, a payload set to NULL, a deleted event, two swapped events, a
   truncated tail, a checkpoint's signature, a checkpoint re-signed by another key); `custos verify` and
   the independent Python verifier (e2e/evidence_verify.py) must both name the expected kind and
   seq, and untouched copies must verify.
2. Durability: pgbench through the gateway, `kill -9` mid-run, restart on the same store; every
   statement PostgreSQL logged for pgbench's sessions is in the record, and the store verifies
   with at most an unsigned tail.

Knobs: CUSTOS_EVIDENCE_SEED (default random, printed), CUSTOS_EVIDENCE_MUTATIONS (1040),
CUSTOS_EVIDENCE_UNTOUCHED (52), CUSTOS_EVIDENCE_ROUNDS (3), CUSTOS_EVIDENCE_PGBENCH_SECONDS (12),
CUSTOS_EVIDENCE_WORKERS (parallel `custos verify` runs; default the CPU count, at most 4).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import evidence_verify as ev
from custos_e2e import Gateway, custos_bin

SEED = int(os.environ.get("CUSTOS_EVIDENCE_SEED") or random.SystemRandom().randrange(1, 2**31))
MUTATIONS = int(os.environ.get("CUSTOS_EVIDENCE_MUTATIONS", "1040"))
UNTOUCHED = int(os.environ.get("CUSTOS_EVIDENCE_UNTOUCHED", "52"))
ROUNDS = int(os.environ.get("CUSTOS_EVIDENCE_ROUNDS", "3"))
PGBENCH_SECONDS = int(os.environ.get("CUSTOS_EVIDENCE_PGBENCH_SECONDS", "12"))
WORKERS = int(os.environ.get("CUSTOS_EVIDENCE_WORKERS") or min(4, os.cpu_count() or 1))
TAMPER_LIMIT = 900      # seconds for the whole tamper suite
DURABILITY_LIMIT = 600
CHECKPOINT_EVERY = 25
# The statement log the durability check reads; scripts/evidence-check configures PostgreSQL so,
# otherwise the test sets it with ALTER SYSTEM for its duration.
LOG_LINE_PREFIX = "%m [%p] %q%u@%d app=[%a] "

DENY_MESSAGE = "destructive statements are not allowed"
HEX = "0123456789abcdef"
PRINTABLE = [chr(c) for c in range(0x20, 0x7f)]


@contextlib.contextmanager
def watchdog(seconds: int, what: str):
    """A deadline of its own (longer than e2e/conftest.py's per-test one, which it replaces)."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} exceeded {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------
# the CLI and the stores


def custos_verify(config: Path, *args: str, timeout: float = 120) -> tuple[int, dict | None, str]:
    """(exit status, parsed --json output or None, stderr)."""
    result = subprocess.run([str(custos_bin()), "verify", "--json", "--config", str(config), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=config.parent)
    try:
        data = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        data = None
    return result.returncode, data, (result.stderr.strip() or result.stdout.strip())[-2000:]


def backup_store(src: Path, dst: Path) -> None:
    """A consistent single-file copy (WAL included), in rollback-journal mode."""
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=10)
        source.execute("SELECT count(*) FROM events").fetchone()
    except sqlite3.Error:
        source = sqlite3.connect(src, timeout=10)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
        target.commit()
    finally:
        target.close()
        source.close()


def public_key_of(gw: Gateway) -> str:
    key_file = gw.directory / gw.config.get("keys", {}).get("signing_file", "custos-signing.key")
    assert key_file.exists(), f"no signing key at {key_file}; gateway log:\n{gw.log()[-2000:]}"
    assert key_file.stat().st_mode & 0o077 == 0, f"{key_file} is readable by group or others"
    return ev.public_key_from_file(key_file)


def core(report: dict) -> dict:
    keys = ("writer_id", "events", "first_seq", "last_seq", "signed_through", "unsigned_tail")
    return {k: report.get(k) for k in keys}


def random_hex(rng: random.Random, n: int, other_than: str) -> str:
    while True:
        value = "".join(rng.choice(HEX) for _ in range(n))
        if value != other_than:
            return value


# --------------------------------------------------------------------------
# 1. the tamper suite


def record_sessions(gw: Gateway, mint) -> dict:
    """Several sessions through psycopg (extended protocol) and psql (simple), one denial, one refusal."""
    counts = collections.Counter()
    token = mint(sub="evidence-agent", email="evidence@example.com", groups=["agents"])
    odd = ["grüße aus Köln", "quote ' and \"double\"", "back\\slash", "tab\there", "new\nline", "emoji 🎉 ✓",
           "control \x01 char", "ünïcödé ≠ ascii"]
    for n in range(6):
        with psycopg.connect(gw.dsn(token, app=f"evidence-psycopg-{n}"), autocommit=True) as conn:
            for i in range(18):
                conn.execute("SELECT id, full_name, email FROM customers WHERE id = %s", (1 + (n * 18 + i) % 50,)).fetchall()
                counts["statements"] += 1
            for i in range(4):
                conn.execute("INSERT INTO events_log (source, level, message) VALUES (%s, %s, %s)",
                             ("evidence", "info", f"{odd[(n + i) % len(odd)]} #{n}.{i}"))
                counts["statements"] += 1
            with conn.transaction():
                conn.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (n + 1,)).fetchone()
                conn.execute("UPDATE events_log SET level = 'debug' WHERE source = 'evidence' AND id < 0")
                counts["statements"] += 4   # BEGIN, 2, COMMIT
    for n in range(2):
        script = "\n".join(
            [f"SELECT {i} AS n, 'psql {n}' AS who;" for i in range(12)]
            + ["SELECT full_name FROM customers ORDER BY id LIMIT 3;",
               "INSERT INTO events_log (source, level, message) VALUES ('evidence', 'warn', 'from psql ⚠');"]
            + (["DELETE FROM events_log;"] if n == 0 else []))
        result = gw.psql(token, "-f", "-", stdin=script, app=f"evidence-psql-{n}")
        assert result.returncode == 0, result.stderr
        if n == 0:
            assert DENY_MESSAGE in result.stderr, f"DELETE FROM events_log was not denied:\n{result.stdout}\n{result.stderr}"
            counts["denied"] += 1
    # a refused session (bad token): a session.refused event
    bad = gw.psql("not-a-token", "-c", "SELECT 1", app="evidence-refused")
    assert bad.returncode != 0, bad.stdout
    counts["refused"] += 1
    return dict(counts)


class Mutation:
    def __init__(self, category: str, expected_kind: str | None, expected_seq: int | None, description: str, apply):
        self.category = category
        self.expected_kind = expected_kind
        self.expected_seq = expected_seq
        self.description = description
        self.apply = apply


def plan_mutations(rng: random.Random, events: list[dict], checkpoints: list[dict]) -> list[Mutation]:
    writer = events[0]["writer_id"]
    n = len(events)
    by_seq = {e["seq"]: e for e in events}
    last_cp = max(c["seq"] for c in checkpoints)
    with_payload = [e["seq"] for e in events if e["payload"] is not None]
    categories = ["payload_char", "payload_hash", "prev_hash", "hash", "payload_null", "delete", "swap", "truncate",
                  "signature", "signing_key"]
    per = -(-MUTATIONS // len(categories))
    plan: list[Mutation] = []

    def update(column: str, seq: int, value):
        return lambda db: db.execute(f"UPDATE events SET {column} = ? WHERE writer_id = ? AND seq = ?", (value, writer, seq))

    for category in categories:
        for _ in range(per):
            if category == "payload_char":
                s = rng.choice(with_payload)
                text = by_seq[s]["payload"]
                p = rng.randrange(len(text))
                c = rng.choice([ch for ch in PRINTABLE if ch != text[p]])
                plan.append(Mutation(category, "modified", s, f"payload of seq {s}: char {p} {text[p]!r} -> {c!r}",
                                     update("payload", s, text[:p] + c + text[p + 1:])))
            elif category in ("payload_hash", "prev_hash", "hash"):
                s = rng.randint(1, n)
                value = random_hex(rng, 64, by_seq[s][category])
                plan.append(Mutation(category, "modified", s, f"{category} of seq {s} -> {value[:12]}…",
                                     update(category, s, value)))
            elif category == "payload_null":
                # a payload removed with no retention event covering it (the store has none)
                s = rng.choice(with_payload)
                plan.append(Mutation(category, "modified", s, f"payload of seq {s} -> NULL", update("payload", s, None)))
            elif category == "delete":
                s = rng.randint(2, n - 1)
                plan.append(Mutation(category, "missing", s, f"delete seq {s}",
                                     lambda db, s=s: db.execute("DELETE FROM events WHERE writer_id = ? AND seq = ?", (writer, s))))
            elif category == "swap":
                i, j = sorted(rng.sample(range(1, n + 1), 2))
                plan.append(Mutation(category, "reordered", i, f"swap seq {i} and seq {j}",
                                     lambda db, i=i, j=j: swap_events(db, writer, i, j)))
            elif category == "truncate":
                k = rng.randint(1, last_cp - 1)
                plan.append(Mutation(category, "truncated", k + 1, f"delete every seq after {k} (last checkpoint {last_cp})",
                                     lambda db, k=k: db.execute("DELETE FROM events WHERE writer_id = ? AND seq > ?", (writer, k))))
            elif category == "signature":
                c = rng.choice(checkpoints)
                value = random_hex(rng, 128, c["signature"])
                plan.append(Mutation(category, "signature_invalid", c["seq"], f"signature of the checkpoint at seq {c['seq']} -> {value[:12]}…",
                                     lambda db, c=c, value=value: db.execute(
                                         "UPDATE checkpoints SET signature = ? WHERE writer_id = ? AND seq = ? AND signature = ?",
                                         (value, c["writer_id"], c["seq"], c["signature"]))))
            elif category == "signing_key":
                # a checkpoint re-signed by another key, its public_key column naming that key
                c = rng.choice(checkpoints)
                other = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
                forged = {**c, "public_key": other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()}
                forged["signature"] = other.sign(ev.checkpoint_message(forged)).hex()
                plan.append(Mutation(category, "signature_invalid", c["seq"], f"the checkpoint at seq {c['seq']} signed by another key",
                                     lambda db, c=c, f=forged: db.execute(
                                         "UPDATE checkpoints SET public_key = ?, signature = ? WHERE writer_id = ? AND seq = ? AND signature = ?",
                                         (f["public_key"], f["signature"], c["writer_id"], c["seq"], c["signature"]))))
    plan += [Mutation("untouched", None, None, "no change", lambda db: None) for _ in range(UNTOUCHED)]
    rng.shuffle(plan)
    return plan


SWAPPED = ("at", "session_id", "kind", "payload", "payload_hash", "prev_hash", "hash")


def swap_events(db: sqlite3.Connection, writer: str, i: int, j: int) -> None:
    rows = {}
    for s in (i, j):
        rows[s] = db.execute(f"SELECT {', '.join(SWAPPED)} FROM events WHERE writer_id = ? AND seq = ?", (writer, s)).fetchone()
    assignments = ", ".join(f"{c} = ?" for c in SWAPPED)
    db.execute(f"UPDATE events SET {assignments} WHERE writer_id = ? AND seq = ?", (*rows[j], writer, i))
    db.execute(f"UPDATE events SET {assignments} WHERE writer_id = ? AND seq = ?", (*rows[i], writer, j))


def mutate_copy(pristine: Path, target: Path, mutation: Mutation) -> None:
    shutil.copyfile(pristine, target)
    db = sqlite3.connect(target)
    try:
        # an attacker with the file drops whatever append-only triggers it has
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        before = db.total_changes
        mutation.apply(db)
        db.commit()
        if mutation.category != "untouched":
            assert db.total_changes > before, f"mutation changed nothing: {mutation.description}"
    finally:
        db.close()


def test_tamper_suite(launcher, mint, tmp_path):
    with watchdog(TAMPER_LIMIT, "the tamper suite"):
        started = time.monotonic()
        rng = random.Random(SEED)
        say(f"\ntamper suite: seed {SEED} (CUSTOS_EVIDENCE_SEED={SEED} repeats it); {WORKERS} parallel verify runs")
        gw = launcher.start({
            "recording": {"checkpoint_every": CHECKPOINT_EVERY},
            "policy": {"rules": [
                {"name": "deny-destructive", "match": {"flags": ["destructive"]}, "action": "deny",
                 "message": DENY_MESSAGE},
                {"name": "allow-agents", "match": {"groups": ["agents"]}, "action": "allow"},
            ]},
        }, name="tamper")
        try:
            counts = record_sessions(gw, mint)
        finally:
            rc = gw.stop()
        assert rc == 0, f"custos serve exited {rc} after SIGTERM:\n{gw.log()[-3000:]}"
        public_key = public_key_of(gw)

        work = tmp_path / "copies"
        work.mkdir()
        pristine = work / "pristine.sqlite"
        backup_store(gw.store_path, pristine)
        events, checkpoints = ev.read_store(pristine)
        writers = {e["writer_id"] for e in events}
        assert len(writers) == 1, writers
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert checkpoints, "no checkpoints recorded"
        kinds = collections.Counter(e["kind"] for e in events)
        say(f"recorded {len(events)} events {dict(kinds)}, {len(checkpoints)} checkpoints "
            f"(every {CHECKPOINT_EVERY}; last at seq {max(c['seq'] for c in checkpoints)}), sessions: {counts}")
        assert len(events) >= 300 and kinds["session.refused"] >= 1
        assert max(c["seq"] for c in checkpoints) == len(events), "a clean stop did not sign the tail"
        assert all(c["public_key"] == public_key for c in checkpoints)
        assert any('"verdict":"deny"' in (e["payload"] or "") for e in events if e["kind"] == "statement")

        # the untouched store: both verifiers say intact, and agree on the figures
        config = gw.config_path
        rc, out, err = custos_verify(config, "--store", str(pristine))
        assert rc == 0 and out is not None and out["ok"] is True and out["problem"] is None, (rc, out, err)
        py = ev.verify_store(pristine, public_key)
        assert py["ok"], ev.summarize(py)
        assert [core(w) for w in out["writers"]] == [core(w) for w in py["writers"]], (out["writers"], py["writers"])
        assert py["unsigned_tail"] == 0
        rc_signed, _, err_signed = custos_verify(config, "--store", str(pristine), "--require-signed")
        assert rc_signed == 0, err_signed
        say(f"untouched store: custos verify exit 0, {core(out['writers'][0])}; Python verifier agrees")

        plan = plan_mutations(rng, events, checkpoints)
        failures: list[str] = []
        tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        lock = threading.Lock()
        slots = [work / f"slot{n}" for n in range(WORKERS)]
        for slot in slots:
            slot.mkdir()
        free_slots = list(slots)

        def run(index: int, mutation: Mutation) -> None:
            with lock:
                slot = free_slots.pop()
            try:
                target = slot / "store.sqlite"
                mutate_copy(pristine, target, mutation)
                rc, out, err = custos_verify(config, "--store", str(target))
                py = ev.verify_store(target, public_key)
                problem = (out or {}).get("problem") or {}
                got_cli = (problem.get("kind"), problem.get("seq"))
                got_py = ((py["problem"] or {}).get("kind"), (py["problem"] or {}).get("seq"))
                want = (mutation.expected_kind, mutation.expected_seq)
                want_rc = 0 if mutation.category == "untouched" else 1
                wrong = []
                if rc != want_rc:
                    wrong.append(f"custos verify exit {rc} (expected {want_rc})")
                if got_cli != want:
                    wrong.append(f"custos verify said {got_cli}")
                if got_py != want:
                    wrong.append(f"Python verifier said {got_py}")
                if mutation.category != "untouched" and problem and problem.get("writer_id") != events[0]["writer_id"]:
                    wrong.append(f"custos verify named writer {problem.get('writer_id')}")
                with lock:
                    tally[mutation.category]["runs"] += 1
                    tally[mutation.category]["cli_ok"] += got_cli == want and rc == want_rc
                    tally[mutation.category]["py_ok"] += got_py == want
                    if wrong:
                        failures.append(f"#{index} {mutation.category}: {mutation.description}: expected {want}; "
                                        + "; ".join(wrong) + (f"; detail: {problem.get('detail')!r}" if problem else "")
                                        + (f"; stderr: {err[:300]}" if rc not in (0, 1) else ""))
            finally:
                with lock:
                    free_slots.append(slot)

        mutations_started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(run, index, m) for index, m in enumerate(plan)]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                future.result()
                if done % 200 == 0:
                    say(f"  {done}/{len(plan)} copies checked ({time.monotonic() - mutations_started:.0f}s)")
        elapsed = time.monotonic() - mutations_started

        say(f"tamper suite: {len(plan) - UNTOUCHED} mutations + {UNTOUCHED} untouched copies in {elapsed:.0f}s "
            f"({elapsed / len(plan) * 1000:.0f} ms per copy, {WORKERS} at a time); seed {SEED}")
        say(f"  {'category':<14}{'runs':>6}{'custos ok':>11}{'python ok':>11}  expected")
        expected_kind = {"payload_char": "modified", "payload_hash": "modified", "prev_hash": "modified", "hash": "modified",
                         "payload_null": "modified", "delete": "missing", "swap": "reordered", "truncate": "truncated",
                         "signature": "signature_invalid", "signing_key": "signature_invalid", "untouched": "intact"}
        for category in sorted(tally):
            t = tally[category]
            say(f"  {category:<14}{t['runs']:>6}{t['cli_ok']:>11}{t['py_ok']:>11}  {expected_kind[category]}")
        say(f"  failures: {len(failures)}; total {time.monotonic() - started:.0f}s")
        for line in failures[:40]:
            say("  " + line)
        assert not failures, f"{len(failures)} of {len(plan)} copies misjudged (seed {SEED}); first: {failures[:5]}"


# --------------------------------------------------------------------------
# 2. durability under kill -9


LOG_ENTRY_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] ")
LOG_STATEMENT_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[(\d+)\] (\S*)@(\S*) app=\[(.*?)\] LOG:  statement: (.*)$",
                              re.DOTALL)


@contextlib.contextmanager
def statement_logging(pg):
    """log_statement=all with LOG_LINE_PREFIX for the duration; yields the server log's path."""
    def connect():
        return psycopg.connect(pg.direct_dsn("super", "postgres"), autocommit=True)

    with connect() as conn:
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        current = (conn.execute("SHOW log_statement").fetchone()[0], conn.execute("SHOW log_line_prefix").fetchone()[0])
        changed = current != ("all", LOG_LINE_PREFIX)
        if changed:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute(f"ALTER SYSTEM SET log_line_prefix = '{LOG_LINE_PREFIX}'")
            conn.execute("SELECT pg_reload_conf()")
    if changed:
        deadline = time.monotonic() + 10
        while True:
            with connect() as conn:
                if (conn.execute("SHOW log_statement").fetchone()[0], conn.execute("SHOW log_line_prefix").fetchone()[0]) == ("all", LOG_LINE_PREFIX):
                    break
            assert time.monotonic() < deadline, "PostgreSQL did not take log_statement = all"
            time.sleep(0.1)
    log = Path(data_directory).parent / "postgres.log"
    assert log.exists(), f"no server log at {log} (pg_start writes it beside the data directory)"
    try:
        yield log
    finally:
        if changed:
            with connect() as conn:
                conn.execute("ALTER SYSTEM RESET log_statement")
                conn.execute("ALTER SYSTEM RESET log_line_prefix")
                conn.execute("SELECT pg_reload_conf()")


def logged_statements(log: Path, offset: int, app: str) -> list[str]:
    """Statement texts PostgreSQL logged (from byte offset) for custos_scram@pgbench sessions named `app`."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    entries: list[str] = []
    for line in text.split("\n"):
        if LOG_ENTRY_RE.match(line):
            entries.append(line)
        elif line.startswith("\t") and entries:
            entries[-1] += "\n" + line[1:]       # stderr logging tabs in a message's continuation lines
    out = []
    for entry in entries:
        m = LOG_STATEMENT_RE.match(entry)
        if m and m.group(2) == "custos_scram" and m.group(3) == "pgbench" and m.group(4) == app:
            out.append(m.group(5))
    return out


def recorded_statements(store: Path, app: str) -> tuple[list[str], int]:
    """(statement texts of sessions whose client application_name is `app`, how many sessions)."""
    events, _ = ev.read_store(store)
    sessions = set()
    for e in events:
        if e["kind"] == "session.open" and e["payload"] is not None:
            client = json.loads(e["payload"]).get("client") or {}
            if client.get("application_name") == app:
                sessions.add(e["session_id"])
    texts = []
    masked = 0
    for e in events:
        if e["kind"] == "statement" and e["session_id"] in sessions:
            payload = json.loads(e["payload"])
            texts.append(payload["text"])
            masked += bool(payload.get("text_masked"))
    assert masked == 0, f"{masked} pgbench statements were recorded masked (no masking rule applies here)"
    return texts, len(sessions)


def test_kill9_during_pgbench_loses_no_forwarded_statement(launcher, mint, pg, tmp_path):
    with watchdog(DURABILITY_LIMIT, "the durability check"), statement_logging(pg) as pglog:
        rng = random.Random(SEED)
        say(f"\ndurability: {ROUNDS} rounds of pgbench -M simple -c 4 -j 2 -T {PGBENCH_SECONDS}, kill -9 mid-run; "
            f"seed {SEED}; PostgreSQL log {pglog}")
        token = mint(sub="durability-agent", email="durability@example.com", groups=["agents"], ttl=3600)
        gw = launcher.start({"recording": {"checkpoint_every": 1000}}, name="durability")
        public_key = public_key_of(gw)
        figures = []
        try:
            for round_ in range(1, ROUNDS + 1):
                app = f"evidence-pgbench-{os.getpid()}-{round_}"
                offset = pglog.stat().st_size
                env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "disable", "PGAPPNAME": app, "PGCONNECT_TIMEOUT": "10"}
                bench = subprocess.Popen(
                    [pg.bin("pgbench"), "-n", "-M", "simple", "-c", "4", "-j", "2", "-T", str(PGBENCH_SECONDS),
                     "-h", "127.0.0.1", "-p", str(gw.port), "-U", "agent", "pgbench"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                kill_after = PGBENCH_SECONDS * rng.uniform(0.3, 0.6)
                time.sleep(kill_after)
                assert bench.poll() is None, f"pgbench ended before the kill:\n{bench.communicate()[0][-2000:]}"
                assert gw.alive(), f"the gateway died by itself:\n{gw.log()[-3000:]}"
                gw.proc.kill()                       # SIGKILL: no shutdown, no checkpoint
                gw.proc.wait(10)
                gw.proc = None
                bench_out, _ = bench.communicate(timeout=60)
                time.sleep(0.5)                      # PostgreSQL notices the dropped connections

                # the store as kill -9 left it
                crashed = tmp_path / f"crashed-{round_}.sqlite"
                backup_store(gw.store_path, crashed)
                # ... with its write-ahead journal: what was recorded but not loaded into SQLite yet,
                # loaded as the gateway's next start would (custos verify --recover).
                journal = sorted(gw.store_path.parent.glob(gw.store_path.name + ".ahead.*"))
                assert journal, "kill -9 left no write-ahead journal"
                for path in journal:
                    shutil.copyfile(path, tmp_path / (crashed.name + path.name[len(gw.store_path.name):]))
                rc, out, err = custos_verify(gw.config_path, "--store", str(crashed), "--recover")
                assert rc == 0 and out and out["ok"], (rc, out, err)
                journal_loaded = int(re.search(r"loaded (\d+) event", err).group(1))
                logged = logged_statements(pglog, offset, app)
                recorded, sessions = recorded_statements(crashed, app)
                missing = collections.Counter(logged) - collections.Counter(recorded)
                extra = collections.Counter(recorded) - collections.Counter(logged)
                assert logged, f"PostgreSQL logged no statement for {app}; pgbench said:\n{bench_out[-2000:]}"
                assert not missing, (f"round {round_}: {sum(missing.values())} statements PostgreSQL ran are not in the record: "
                                     f"{list(missing.items())[:10]}")
                # at most one statement per client was committed to the record and not yet forwarded
                assert sum(extra.values()) <= 5, f"round {round_}: recorded but never run: {list(extra.items())[:10]}"

                rc, out, err = custos_verify(gw.config_path, "--store", str(crashed))
                assert rc == 0 and out and out["ok"], (rc, out, err)
                py = ev.verify_store(crashed, public_key)
                assert py["ok"], ev.summarize(py)
                tail = out["writers"][0]["unsigned_tail"]
                assert py["unsigned_tail"] == tail, (py["writers"], out["writers"])
                rc_signed, out_signed, _ = custos_verify(gw.config_path, "--store", str(crashed), "--require-signed")
                assert rc_signed == (1 if tail else 0), (rc_signed, out_signed)

                transactions = re.search(r"number of transactions actually processed: (\d+)", bench_out or "")
                figures.append({"round": round_, "killed_after_s": round(kill_after, 1), "sessions": sessions, "from_journal": journal_loaded,
                                "logged": len(logged), "recorded": len(recorded), "recorded_not_run": sum(extra.values()),
                                "unsigned_tail": tail, "events": out["writers"][0]["events"],
                                "transactions": int(transactions.group(1)) if transactions else None})
                say(f"  round {round_}: killed after {kill_after:.1f}s; {sessions} sessions; PostgreSQL logged {len(logged)} "
                    f"statements, all in the record ({len(recorded)} recorded, {sum(extra.values())} recorded but not run; "
                    f"{journal_loaded} events loaded from the journal); "
                    f"custos verify exit 0, unsigned tail {tail} of {out['writers'][0]['events']} events")

                # the same store, the same chain (a fresh log: Gateway.start reads the first "listening on")
                gw.log_path.rename(gw.directory / f"custos.round{round_}.log")
                gw.start()
            rc = gw.stop()
            assert rc == 0, f"custos serve exited {rc} after SIGTERM:\n{gw.log()[-3000:]}"
        finally:
            if gw.alive():
                gw.proc.kill()
                gw.proc.wait(10)
                gw.proc = None

        # after a clean stop the whole chain, three crashes included, is signed
        rc, out, err = custos_verify(gw.config_path, "--require-signed")
        assert rc == 0 and out and out["ok"], (rc, out, err)
        py = ev.verify_store(gw.store_path, public_key)
        assert py["ok"] and py["unsigned_tail"] == 0, ev.summarize(py)
        assert out["writers"][0]["unsigned_tail"] == 0
        say(f"durability: {ROUNDS} kill -9 rounds; statements compared: {sum(f['logged'] for f in figures)} "
            f"(none missing); unsigned tails after the kill: {[f['unsigned_tail'] for f in figures]}; "
            f"after a clean stop: {out['writers'][0]['events']} events, tail 0 (--require-signed passes)")
        for f in figures:
            say(f"  {f}")
