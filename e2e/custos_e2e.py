"""Helpers for the Custos end-to-end suite: the gateway process, the CLI, the
recording's hash chain, and a minimal PostgreSQL wire client for the cases
stock clients cannot express (exact SQLSTATEs at connect time, bad input).

Everything here is bounded in time: subprocesses, sockets and polls all take
timeouts, so a hung gateway fails a test instead of hanging the suite.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

ROOT = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"custos: listening on 127\.0\.0\.1:(\d+)")
AT_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
GENESIS = "0" * 64


def custos_bin() -> Path:
    return Path(os.environ.get("CUSTOS_BIN") or ROOT / ".build" / "debug" / "custos")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


# --------------------------------------------------------------------------
# PostgreSQL peer


@dataclass
class PostgresPeer:
    host: str
    port: int
    secrets: Path
    bindir: Path
    ssl: bool
    ca_file: Path | None

    def password(self, role: str) -> str:
        return (self.secrets / f"{role}.pw").read_text().strip()

    def direct_dsn(self, role: str = "scram", dbname: str = "appdb") -> str:
        return (f"host={self.host} port={self.port} dbname={dbname} user=custos_{role} "
                f"password={self.password(role)} sslmode=disable connect_timeout=10")

    def bin(self, name: str) -> str:
        path = self.bindir / name
        return str(path) if path.exists() else name


# --------------------------------------------------------------------------
# the gateway


def deep_merge(base: dict, overrides: dict) -> dict:
    """Merge overrides into a copy of base; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class GatewayError(AssertionError):
    pass


@dataclass
class Gateway:
    """One `custos serve` process with its own folder, config and store."""

    directory: Path
    config: dict
    proc: subprocess.Popen | None = None
    port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "custos.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "custos.yaml"

    @property
    def store_path(self) -> Path:
        return self.directory / self.config.get("recording", {}).get("store", "custos.sqlite")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 30) -> "Gateway":
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(custos_bin()), "serve", "--config", str(self.config_path)],
            cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        pid_dir = os.environ.get("CUSTOS_E2E_PIDDIR")
        if pid_dir:
            Path(pid_dir, f"custos-{self.proc.pid}").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING_RE.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise GatewayError(f"custos serve exited with {self.proc.returncode} before listening:\n{self.log()}")
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(5)
        raise GatewayError(f"custos serve did not print 'custos: listening on' within {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM; returns the exit code. Raises if it does not exit in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            self.proc = None
            raise GatewayError(f"custos serve had already exited with {rc} (crash?):\n{self.log()[-4000:]}")
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None
            raise GatewayError(f"custos serve did not exit within {timeout}s of SIGTERM:\n{self.log()[-4000:]}")
        self.proc = None
        return rc

    # ---- client connection strings

    def dsn(self, token: str, dbname: str = "appdb", user: str = "agent", app: str | None = None,
            sslmode: str = "disable", **extra: Any) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": user,
                 "password": token, "sslmode": sslmode, "connect_timeout": 10}
        if app is not None:
            parts["application_name"] = app
        parts.update(extra)
        return " ".join(f"{k}={_quote_conninfo(v)}" for k, v in parts.items())

    def psql(self, token: str, *args: str, dbname: str = "appdb", app: str | None = None,
             sslmode: str = "disable", stdin: str | None = None, timeout: float = 30,
             cwd: str | os.PathLike | None = None, extra: dict | None = None) -> subprocess.CompletedProcess:
        dsn_parts = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": "agent",
                     "sslmode": sslmode, "connect_timeout": 10}
        if app is not None:
            dsn_parts["application_name"] = app
        dsn_parts.update(extra or {})
        dsn = " ".join(f"{k}={_quote_conninfo(v)}" for k, v in dsn_parts.items())
        env = {**os.environ, "PGPASSWORD": token, "PGCONNECT_TIMEOUT": "10"}
        for var in ("PGSERVICE", "PGSSLMODE", "PGAPPNAME", "PGDATABASE", "PGUSER", "PGHOST", "PGPORT"):
            env.pop(var, None)
        return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=0", dsn, *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)

    # ---- the CLI

    def cli(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(custos_bin()), *args, "--config", str(self.config_path)],
                                capture_output=True, text=True, timeout=timeout, cwd=self.directory)
        if check and result.returncode != 0:
            raise GatewayError(f"custos {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def sessions(self, *args: str) -> list[dict]:
        out = self.cli("sessions", "list", "--json", *args).stdout
        data = json.loads(out)
        assert isinstance(data, list), f"sessions list --json printed {type(data)}"
        return data

    def show(self, session_id: str) -> dict:
        data = json.loads(self.cli("sessions", "show", session_id, "--json").stdout)
        assert isinstance(data, dict)
        return data

    def wait_session(self, predicate: Callable[[dict], bool], timeout: float = 10,
                     settled: bool = True, what: str = "session") -> dict:
        """Poll `sessions list` for one matching session (ended unless settled=False)."""
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while True:
            last = [s for s in self.sessions() if predicate(s)]
            if last and (not settled or all(s["outcome"] != "open" for s in last)):
                assert len(last) == 1, f"expected one {what}, found {len(last)}: {last}"
                return last[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {'ended ' if settled else ''}{what} recorded within {timeout}s; "
                                     f"matching: {last}\ngateway log tail:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def session_by_app(self, app: str, **kw: Any) -> dict:
        return self.wait_session(lambda s: s["application_name"] == app, what=f"session with application_name {app!r}", **kw)

    def session_by_client(self, address: str, **kw: Any) -> dict:
        return self.wait_session(lambda s: s["client_address"] == address, what=f"session from {address}", **kw)

    def event_count(self) -> int:
        return verify_chain(self.store_path)["events"]


def _quote_conninfo(value: Any) -> str:
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------
# the recording and its hash chain (CONTRACT.md, docs/evidence.md)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, minimal escapes, raw UTF-8: Python's json matches
    the gateway's CanonicalJSON for the integer-only payloads it writes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_hash(writer_id: str, seq: int, at: str, session_id: str, kind: str, payload_hash: str, prev_hash: str) -> str:
    header = f"custos.event.v1\n{writer_id}\n{seq}\n{at}\n{session_id}\n{kind}\n{payload_hash}\n{prev_hash}"
    return sha256_hex(header.encode("utf-8"))


def check_event(event: dict, prev_hash: str, expected_seq: int) -> list[str]:
    """Problems with one event (as a dict of the table's columns, payload as stored text)."""
    problems = []
    where = f"{event['writer_id']}#{event['seq']}"
    if event["seq"] != expected_seq:
        problems.append(f"{where}: seq {event['seq']}, expected {expected_seq} (gap or duplicate)")
    payload = event["payload"]
    if payload is None:
        problems.append(f"{where}: payload is NULL")
        payload = ""
    payload_bytes = payload.encode("utf-8")
    if sha256_hex(payload_bytes) != event["payload_hash"]:
        problems.append(f"{where}: payload_hash does not match SHA-256 of the stored payload")
    try:
        parsed = json.loads(payload)
        if canonical_json(parsed) != payload:
            problems.append(f"{where}: payload is not in canonical form: {payload[:200]}")
    except ValueError:
        problems.append(f"{where}: payload is not JSON: {payload[:200]}")
    if not AT_RE.match(event["at"]):
        problems.append(f"{where}: at {event['at']!r} is not RFC 3339 UTC with 6 fractional digits")
    for name in ("payload_hash", "prev_hash", "hash"):
        if not HEX64_RE.match(event[name] or ""):
            problems.append(f"{where}: {name} is not 64 lowercase hex digits")
    if event["prev_hash"] != prev_hash:
        problems.append(f"{where}: prev_hash {event['prev_hash'][:16]}… does not link to {prev_hash[:16]}…")
    expected = event_hash(event["writer_id"], event["seq"], event["at"], event["session_id"], event["kind"],
                          event["payload_hash"], event["prev_hash"])
    if expected != event["hash"]:
        problems.append(f"{where}: hash does not match the recomputed event hash")
    return problems


def read_events(store: Path) -> list[dict]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT writer_id, seq, at, session_id, kind, payload, payload_hash, prev_hash, hash "
                            "FROM events ORDER BY writer_id, seq").fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def verify_chain(store: Path) -> dict:
    """Verify every writer's chain in the store; raise AssertionError listing the breaks."""
    events = read_events(store)
    problems: list[str] = []
    writers: dict[str, int] = {}
    prev: dict[str, str] = {}
    for event in events:
        writer = event["writer_id"]
        expected_seq = writers.get(writer, 0) + 1
        problems += check_event(event, prev.get(writer, GENESIS), expected_seq)
        writers[writer] = event["seq"]
        prev[writer] = event["hash"]
    if problems:
        raise AssertionError(f"hash chain broken in {store} ({len(problems)} problems):\n" + "\n".join(problems[:30]))
    return {"events": len(events), "writers": writers}


def verify_shown_events(shown: dict) -> None:
    """The events in `sessions show --json` are this session's, intact and hash-consistent."""
    events = shown["events"]
    assert events, "sessions show listed no events"
    for event in events:
        assert event["session_id"] == shown["id"]
        stored = {**event, "payload": canonical_json(event["payload"])}
        assert sha256_hex(stored["payload"].encode()) == event["payload_hash"], f"payload hash mismatch in {event}"
        assert event_hash(event["writer_id"], event["seq"], event["at"], event["session_id"], event["kind"],
                          event["payload_hash"], event["prev_hash"]) == event["hash"]


# --------------------------------------------------------------------------
# a minimal wire client


class WireClient:
    """Raw PostgreSQL protocol over a socket, for exact SQLSTATEs and bad input."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""

    @property
    def local_address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "WireClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_startup(self, params: dict[str, str]) -> None:
        body = struct.pack("!I", 196608)
        for k, v in params.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.send_raw(struct.pack("!I", len(body) + 4) + body)

    def send(self, type_: bytes, body: bytes = b"") -> None:
        self.send_raw(type_ + struct.pack("!I", len(body) + 4) + body)

    def query(self, text: str) -> None:
        self.send(b"Q", text.encode() + b"\0")

    def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def recv(self) -> tuple[bytes, bytes] | None:
        """One backend message (type, body); None at EOF. socket.timeout if silent."""
        if not self._fill(5):
            if self.buffer:
                raise AssertionError(f"EOF in the middle of a message header: {self.buffer!r}")
            return None
        type_ = self.buffer[:1]
        (length,) = struct.unpack("!I", self.buffer[1:5])
        if not self._fill(1 + length):
            raise AssertionError(f"EOF in the middle of a {type_!r} message")
        body = self.buffer[5:1 + length]
        self.buffer = self.buffer[1 + length:]
        return type_, body

    def recv_byte(self) -> bytes:
        if not self._fill(1):
            return b""
        b, self.buffer = self.buffer[:1], self.buffer[1:]
        return b

    def recv_until(self, types: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first of `types`, or up to EOF."""
        wanted = set(types)
        out = []
        while True:
            msg = self.recv()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] in wanted:
                return out

    def recv_all(self) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Everything until EOF; (messages, reached_eof)."""
        out = []
        try:
            while True:
                msg = self.recv()
                if msg is None:
                    return out, True
                out.append(msg)
        except (socket.timeout, TimeoutError):
            return out, False

    def login(self, token: str, database: str = "appdb", user: str = "agent", app: str | None = None,
              extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
        params = {"user": user, "database": database}
        if app:
            params["application_name"] = app
        params.update(extra or {})
        self.send_startup(params)
        first = self.recv()
        if first is None:
            return []
        if first[0] != b"R" or struct.unpack("!I", first[1][:4])[0] != 3:
            return [first] + self.recv_until([b"Z", b"E"])
        self.send(b"p", token.encode() + b"\0")
        return [first] + self.recv_until([b"Z", b"E"])


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def errors_in(messages: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    return [error_fields(body) for t, body in messages if t == b"E"]


def command_complete_tags(messages: list[tuple[bytes, bytes]]) -> list[str]:
    return [body.rstrip(b"\0").decode() for t, body in messages if t == b"C"]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_json(url: str, token: str | None = None) -> tuple[int, object]:
    """GET url (no proxy), with a bearer token when given: (status, parsed JSON, or text if not JSON)."""
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def copy_secrets(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    os.chmod(dst, 0o700)
    for name in ("scram.pw", "md5.pw", "plain.pw", "super.pw", "pg-ca.crt"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    (dst / "wrong.pw").write_text("not-the-password")
    os.chmod(dst / "wrong.pw", 0o600)
