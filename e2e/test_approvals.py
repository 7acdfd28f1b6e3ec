"""Per-statement approvals, end to end: a `review` rule with approvers holds the client's statement
(a NOTICE names the approval) until a member of an approver group decides through the admin API or
`custos approvals`; approved, it runs; denied or still pending at the hold timeout, the client gets
42501 (a failed block inside a transaction). An approval decided after the hold is a one-time pass
for exactly that statement by that identity. Webhooks hear of requests and decisions; pending
approvals outlive a restart; every step is an event in the hash-chained record."""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest

from custos_e2e import (
    WireClient, closed_port, command_complete_tags, custos_bin, error_fields, read_events, verify_chain, verify_shown_events, wait_until,
)

# --------------------------------------------------------------------------
# configuration and identities

AGENT = {"sub": "agent-1", "email": "agent@example.com", "groups": ["agents"]}
AGENT2 = {"sub": "agent-2", "email": "agent2@example.com", "groups": ["agents"]}
AGENT_DBA = {"sub": "agent-dba", "email": "agent-dba@example.com", "groups": ["agents", "dba"]}
DBA = {"sub": "dba-1", "email": "dba@example.com", "groups": ["dba"]}
DBA2 = {"sub": "dba-2", "email": "dba2@example.com", "groups": ["dba"]}
ONCALL = {"sub": "oncall-1", "email": "oncall@example.com", "groups": ["oncall"]}    # approver role, not an approver group of the rule
AUDITOR = {"sub": "auditor-1", "email": "auditor@example.com", "groups": ["auditors"]}

UPDATE_SQL = ("UPDATE events_log SET level = %s, payload = jsonb_build_object('n', (payload->>'n')::int + 1) "
              "WHERE message = %s")
ADMIN_RE = re.compile(r"custos: admin API listening on 127\.0\.0\.1:(\d+)")
NOTICE_RE = re.compile(r"^Custos: this statement needs approval (\S+)")


def approval_config(hold: str = "3s", ttl: str = "60s", webhooks: list[str] | None = None) -> dict:
    config = {
        "policy": {"rules": [
            {"name": "reads", "match": {"read_only": True}, "action": "allow"},
            {"name": "session", "match": {"kinds": ["begin", "commit", "rollback", "set", "savepoint", "release", "rollback_to"]},
             "action": "allow"},
            {"name": "changes", "match": {"kinds": ["update", "insert", "delete"]}, "action": "review",
             "approvers": ["dba"], "required_approvals": 1, "hold_timeout": hold, "approval_ttl": ttl},
        ]},
        "admin": {"host": "127.0.0.1", "port": 0,
                  "roles": {"approver": ["dba", "oncall"], "auditor": ["auditors"], "admin": ["platform"]}},
    }
    if webhooks is not None:
        config["approvals"] = {"webhooks": webhooks}
    return config


# --------------------------------------------------------------------------
# the admin API and the CLI


class Admin:
    """The gateway's admin HTTP API (bearer = an OIDC token from the test issuer)."""

    def __init__(self, gw, timeout: float = 15):
        match = wait_until(lambda: ADMIN_RE.search(gw.log()), timeout, what="'custos: admin API listening on' in the log")
        self.url = f"http://127.0.0.1:{match.group(1)}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, token: str | None = None, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, method=method, data=data)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with self.opener.open(request, timeout=15) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, approval_id: str, token: str) -> dict:
        status, body = self.call("GET", f"/api/v1/approvals/{approval_id}", token)
        assert status == 200, (status, body)
        return body

    def list(self, token: str, status: str | None = None) -> list[dict]:
        path = "/api/v1/approvals" + (f"?status={status}" if status else "")
        code, body = self.call("GET", path, token)
        assert code == 200, (code, body)
        return approvals_in(body)

    def decide(self, approval_id: str, verdict: str, token: str, comment: str | None = None) -> tuple[int, object]:
        body = {} if comment is None else {"comment": comment}
        return self.call("POST", f"/api/v1/approvals/{approval_id}/{verdict}", token, body)


def approvals_in(body) -> list[dict]:
    """The list endpoint answers {"approvals": [...]} (docs/openapi.yaml)."""
    assert isinstance(body, dict) and isinstance(body.get("approvals"), list), f"not an approval list: {body!r}"
    return body["approvals"]


def assert_api_error(result: tuple[int, object], status: int, code: str | None = None) -> dict:
    got, body = result
    assert got == status, f"expected HTTP {status}, got {got}: {body}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"error body is not {{'error': {{...}}}}: {body!r}"
    assert isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def cli(admin: Admin, token: str | None, *args: str, use_env: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
    """`custos approvals ...` against the admin API (flags, or CUSTOS_GATEWAY / CUSTOS_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOS_GATEWAY", "CUSTOS_TOKEN")}
    command = [str(custos_bin()), "approvals", *args]
    if use_env:
        env["CUSTOS_GATEWAY"] = admin.url
        if token is not None:
            env["CUSTOS_TOKEN"] = token
    else:
        command += ["--gateway", admin.url]
        if token is not None:
            command += ["--token", token]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def cli_json(admin: Admin, token: str, *args: str, **kw):
    done = cli(admin, token, *args, "--json", **kw)
    assert done.returncode == 0, f"custos approvals {' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}"
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"custos approvals {' '.join(args)} --json printed no JSON:\n{done.stdout}")


# --------------------------------------------------------------------------
# clients whose statements block


class Notices:
    def __init__(self, conn: psycopg.Connection):
        self.all: list[dict] = []
        self.queue: queue.Queue = queue.Queue()
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag) -> None:
        item = {"severity": diag.severity, "sqlstate": diag.sqlstate, "primary": diag.message_primary,
                "detail": diag.message_detail, "hint": diag.message_hint}
        self.all.append(item)
        self.queue.put(item)

    def approval_notices(self) -> list[dict]:
        return [n for n in self.all if NOTICE_RE.match(n["primary"] or "")]

    def next_approval(self, timeout: float = 10) -> str:
        """The id in the next 'needs approval' notice (checked: NOTICE, detail 'approval id: ID')."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no 'needs approval' notice within {timeout}s; notices so far: {self.all}")
            match = NOTICE_RE.match(item["primary"] or "")
            if match:
                approval_id = match.group(1)
                assert item["severity"] == "NOTICE", item
                assert item["detail"] == f"approval id: {approval_id}", item
                return approval_id


class Statement(threading.Thread):
    """One statement run in a thread (it blocks while held)."""

    def __init__(self, conn: psycopg.Connection, sql: str, params=None, **kw):
        super().__init__(daemon=True)
        self.conn, self.sql, self.params, self.kw = conn, sql, params, kw
        self.error: BaseException | None = None
        self.rowcount: int | None = None
        self.statusmessage: str | None = None
        self.elapsed: float | None = None
        self.started_at = time.monotonic()
        self.start()

    def run(self) -> None:
        try:
            cur = self.conn.execute(self.sql, self.params, **self.kw)
            self.rowcount, self.statusmessage = cur.rowcount, cur.statusmessage
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - self.started_at

    def finish(self, timeout: float = 15) -> "Statement":
        self.join(timeout)
        assert not self.is_alive(), f"statement still blocked after {timeout}s: {self.sql}"
        return self

    def succeeded(self, timeout: float = 15) -> "Statement":
        self.finish(timeout)
        assert self.error is None, f"statement failed: {self.error!r}"
        return self

    def failed(self, timeout: float = 15) -> psycopg.Error:
        self.finish(timeout)
        assert isinstance(self.error, psycopg.Error), f"expected a database error, got {self.error!r} (rowcount {self.rowcount})"
        return self.error


class Client:
    """A psycopg connection through the gateway that records notices and joins its threads before closing."""

    def __init__(self, gw, token: str, app: str | None = None, autocommit: bool = True, dbname: str = "appdb"):
        self.conn = psycopg.connect(gw.dsn(token, dbname=dbname, app=app), autocommit=autocommit)
        self.notices = Notices(self.conn)
        self.threads: list[Statement] = []

    def run(self, sql: str, params=None, **kw) -> Statement:
        statement = Statement(self.conn, sql, params, **kw)
        self.threads.append(statement)
        return statement

    def execute(self, sql: str, params=None, **kw):
        return self.conn.execute(sql, params, **kw)

    def close(self) -> None:
        for statement in self.threads:
            statement.join(20)      # never close a connection another thread still uses
        self.conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# data and the record


def seed(direct, app: str) -> str:
    """A row of our own in events_log (payload n = 0); returns its message."""
    marker = f"approvals-{app}-{uuid.uuid4().hex[:8]}"
    direct().execute("INSERT INTO events_log (source, level, message, payload) VALUES ('e2e', 'info', %s, '{\"n\": 0}')",
                     (marker,))
    return marker


def row(direct, marker: str) -> tuple[str, int]:
    """(level, n) of the seeded row: n counts the UPDATEs that ran."""
    return direct().execute("SELECT level, (payload->>'n')::int FROM events_log WHERE message = %s", (marker,)).fetchone()


def events(gw) -> list[dict]:
    return [{**e, "payload": json.loads(e["payload"])} for e in read_events(gw.store_path)]


def approval_events(gw, approval_id: str) -> list[dict]:
    return [e for e in events(gw) if e["kind"].startswith("approval.")
            and isinstance(e["payload"].get("approval"), dict) and e["payload"]["approval"].get("id") == approval_id]


def statement_events(gw, text: str) -> list[dict]:
    return [e for e in events(gw) if e["kind"] == "statement" and e["payload"]["text"] == text]


def result_of(gw, statement: dict) -> dict:
    found = [e for e in events(gw) if e["kind"] == "result" and e["session_id"] == statement["session_id"]
             and e["writer_id"] == statement["writer_id"] and e["payload"]["statement"] == statement["payload"]["statement"]]
    assert len(found) == 1, f"expected one result for statement {statement['payload']}, found {found}"
    return found[0]


def wait_kinds(gw, approval_id: str, kinds: set[str], timeout: float = 10) -> list[dict]:
    return wait_until(lambda: (lambda found: found if kinds <= {e["kind"] for e in found} else None)(approval_events(gw, approval_id)),
                      timeout, what=f"events {sorted(kinds)} for approval {approval_id}")


def assert_denied_by(error: psycopg.Error, approval_id: str, approver: str, comment: str) -> None:
    assert error.sqlstate == "42501", error
    assert error.diag.message_primary == f"statement denied by {approver}: {comment}", error.diag.message_primary
    assert error.diag.message_detail == f"approval id: {approval_id}", error.diag.message_detail


def start(start_gateway, **kw):
    gw = start_gateway(approval_config(**kw))
    return gw, Admin(gw)


# --------------------------------------------------------------------------
# 1. approved while held


def test_update_is_held_until_a_dba_approves_through_the_cli(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway)
    marker = seed(direct, app)
    dba = mint(**DBA)
    with Client(gw, mint(**AGENT), app) as client:
        held = client.run(UPDATE_SQL, ("approved", marker))
        approval_id = client.notices.next_approval()
        time.sleep(0.5)
        assert held.is_alive(), f"the statement must block while its approval is pending (finished: {held.error!r})"
        assert row(direct, marker) == ("info", 0)

        shown = cli_json(admin, dba, "show", approval_id)
        assert shown["id"] == approval_id and shown["status"] == "pending"
        assert shown["requester"]["subject"] == "agent-1" and shown["requester"]["email"] == "agent@example.com"
        assert shown["requester"]["groups"] == ["agents"]
        assert shown["requester"]["issuer"]
        assert shown["connection"] == "appdb"
        assert shown["text"] == UPDATE_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
        assert shown["parameters"] == ["approved", marker]
        assert re.fullmatch(r"[0-9a-f]{64}", shown["fingerprint"]), shown["fingerprint"]
        assert (shown["rule"], shown["approver_groups"], shown["required"], shown["decisions"]) == ("changes", ["dba"], 1, [])
        assert shown["created_at"] and shown["expires_at"] and shown.get("used_at") is None   # optional in docs/openapi.yaml
        assert shown["session_id"]
        assert approval_id in [a["id"] for a in approvals_in(cli_json(admin, dba, "list", "--status", "pending"))]
        assert cli_json(admin, dba, "show", approval_id[:13])["id"] == approval_id, "a unique prefix names the approval"

        decided = cli_json(admin, dba, "approve", approval_id, "--comment", "looks fine")
        assert decided["id"] == approval_id and decided["status"] in ("approved", "used"), decided
        assert [(d["approver"], d["approver_email"], d["verdict"], d["comment"]) for d in decided["decisions"]] == [
            ("dba-1", "dba@example.com", "approve", "looks fine")]

        held.succeeded(10)
        assert held.rowcount == 1 and held.statusmessage == "UPDATE 1"
        assert row(direct, marker) == ("approved", 1)
        assert client.execute("SELECT 1").fetchone() == (1,), "the session goes on after the held statement"

    used = admin.get(approval_id, dba)
    assert used["status"] == "used" and used["used_at"], used

    # the record: statement (review) -> approval.requested -> approval.decided -> approval.used -> result
    [statement] = statement_events(gw, shown["text"])
    assert statement["payload"]["decision"]["verdict"] == "review"
    assert statement["payload"]["decision"]["rule"] == "changes"
    assert statement["session_id"] == shown["session_id"]
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.decided", "approval.used"})
    assert [e["kind"] for e in trail] == ["approval.requested", "approval.decided", "approval.used"]
    assert all(e["writer_id"] == statement["writer_id"] and e["seq"] > statement["seq"] for e in trail)
    assert [e["payload"]["approval"]["status"] for e in trail] == ["pending", "approved", "used"]
    decision = trail[1]["payload"]["decision"]
    assert (decision["approver"], decision["verdict"], decision["comment"]) == ("dba-1", "approve", "looks fine")
    result = result_of(gw, statement)
    assert result["payload"]["command_tag"] == "UPDATE 1" and result["payload"]["error"] is None
    assert result["seq"] > trail[1]["seq"]
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 2. denied, and the webhook hears of it


class HookReceiver:
    """A webhook on 127.0.0.1 that records JSON POSTs; the first `fail_first` requests get a 500."""

    def __init__(self, fail_first: int = 0):
        self.received: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                          "body": json.loads(raw)})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, event: str) -> list[dict]:
        return [r for r in self.received if r["body"].get("event") == event]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    receiver = HookReceiver(fail_first=1)    # the first delivery fails: it must be retried
    yield receiver
    receiver.stop()


def test_denial_through_the_cli_reaches_the_client_and_the_webhook(start_gateway, mint, direct, app, hook):
    gw, admin = start(start_gateway, webhooks=[hook.url])
    marker = seed(direct, app)
    sql = f"UPDATE events_log SET level = 'denied' WHERE message = '{marker}'"    # simple protocol
    comment = "too risky on a Friday"
    dba = mint(**DBA)
    with Client(gw, mint(**AGENT), app) as client:
        held = client.run(sql)
        approval_id = client.notices.next_approval()
        done = cli(admin, dba, "deny", approval_id, "--comment", comment, "--json")
        assert done.returncode == 0, done.stderr
        denied = json.loads(done.stdout)
        assert denied["status"] == "denied"
        assert [(d["approver"], d["verdict"], d["comment"]) for d in denied["decisions"]] == [("dba-1", "deny", comment)]
        error = held.failed(10)
        assert_denied_by(error, approval_id, "dba@example.com", comment)
        assert client.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert client.execute("SELECT 2").fetchone() == (2,)
    assert row(direct, marker) == ("info", 0), "a denied statement never runs"
    assert admin.get(approval_id, dba)["status"] == "denied"

    # the webhook: both events, Slack-compatible text beside the structured approval (the first try got a 500)
    wait_until(lambda: hook.of("approval.requested") and hook.of("approval.decided"), 15,
               what=f"webhook deliveries (received so far: {[r['body'].get('event') for r in hook.received]}, attempts {hook.attempts})")
    assert hook.attempts >= 3, "the failed first delivery was retried"
    [requested] = hook.of("approval.requested")
    [decided_hook] = hook.of("approval.decided")
    for delivery in (requested, decided_hook):
        assert delivery["path"] == "/hook"
        assert (delivery["content_type"] or "").startswith("application/json")
        assert isinstance(delivery["body"]["text"], str) and approval_id in delivery["body"]["text"]
        assert delivery["body"]["approval"]["id"] == approval_id
        assert delivery["body"]["approval"]["requester"]["subject"] == "agent-1"
    assert requested["body"]["approval"]["status"] == "pending"
    assert requested["body"]["approval"]["text"] == sql
    assert requested["body"].get("decision") is None
    assert decided_hook["body"]["approval"]["status"] == "denied"
    decision = decided_hook["body"]["decision"]
    assert (decision["approver"], decision["approver_email"], decision["verdict"], decision["comment"]) == (
        "dba-1", "dba@example.com", "deny", comment)
    assert comment in decided_hook["body"]["text"]

    # the record
    [statement] = statement_events(gw, sql)
    assert statement["payload"]["decision"]["verdict"] == "review"
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.decided"})
    assert [e["kind"] for e in trail] == ["approval.requested", "approval.decided"]
    assert trail[1]["payload"]["decision"]["verdict"] == "deny" and trail[1]["payload"]["decision"]["comment"] == comment
    assert result_of(gw, statement)["payload"]["error"]["sqlstate"] == "42501"
    verify_chain(gw.store_path)
    shown = gw.show(gw.session_by_app(app)["id"])
    verify_shown_events(shown)
    held_statement = [st for st in shown["statements"] if st["text"] == sql]
    assert len(held_statement) == 1 and held_statement[0]["decision"] == "review", shown["statements"]
    assert held_statement[0]["error"]["sqlstate"] == "42501"
    # last, so that everything above is checked first: the documented payload names the key
    assert "decision" in requested["body"], \
        f"a requested event carries \"decision\": null (docs/approvals.md); got keys {sorted(requested['body'])}"


# --------------------------------------------------------------------------
# 3. the hold times out; the approval becomes a one-time pass for exactly that statement


def test_timeout_then_a_one_time_pass_for_the_same_statement(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="3s")
    marker = seed(direct, app)
    dba = mint(**DBA)
    text = UPDATE_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
    with Client(gw, mint(**AGENT), app) as client:
        began = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as pending:
            client.execute(UPDATE_SQL, ("p1", marker))
        waited = time.monotonic() - began
        assert 2.5 <= waited < 8, f"held {waited:.1f}s for a 3s hold timeout"
        approval_id = client.notices.next_approval(timeout=0.1)
        diag = pending.value.diag
        assert pending.value.sqlstate == "42501"
        assert diag.message_primary == f"statement held for approval {approval_id} is still pending; it was not run"
        assert diag.message_detail == f"approval id: {approval_id}"
        assert diag.message_hint and "send the same statement again" in diag.message_hint, diag.message_hint
        assert row(direct, marker) == ("info", 0)
        assert admin.get(approval_id, dba)["status"] == "pending", "the approval outlives the hold"

        status, approved = admin.decide(approval_id, "approve", dba, "go ahead")
        assert status == 200 and approved["status"] == "approved", (status, approved)

        # Another identity sending the very same statement gets no pass.
        with Client(gw, mint(**AGENT2)) as other:
            stolen = other.run(UPDATE_SQL, ("p1", marker))
            other_id = other.notices.next_approval()
            assert other_id != approval_id
            assert admin.decide(other_id, "deny", dba, "not yours")[0] == 200
            assert_denied_by(stolen.failed(10), other_id, "dba@example.com", "not yours")
        assert row(direct, marker) == ("info", 0)

        # The requester's retry runs at once, on the pass.
        notices_before = len(client.notices.approval_notices())
        began = time.monotonic()
        cur = client.execute(UPDATE_SQL, ("p1", marker))
        assert cur.rowcount == 1 and time.monotonic() - began < 2
        assert len(client.notices.approval_notices()) == notices_before, "a statement with a pass is not held"
        assert row(direct, marker) == ("p1", 1)
        used = admin.get(approval_id, dba)
        assert used["status"] == "used" and used["used_at"]

        # Once only: the same statement again is held as a new approval.
        again = client.run(UPDATE_SQL, ("p1", marker))
        second_id = client.notices.next_approval()
        assert second_id not in (approval_id, other_id)
        assert admin.decide(second_id, "deny", dba, "once is enough")[0] == 200
        assert_denied_by(again.failed(10), second_id, "dba@example.com", "once is enough")

        # A different parameter value (a named prepared statement this time) is held as a new approval.
        changed = client.run(UPDATE_SQL, ("p2", marker), prepare=True)
        third_id = client.notices.next_approval()
        assert third_id not in (approval_id, other_id, second_id)
        assert admin.get(third_id, dba)["parameters"] == ["p2", marker]
        assert admin.decide(third_id, "deny", dba, "wrong value")[0] == 200
        assert_denied_by(changed.failed(10), third_id, "dba@example.com", "wrong value")
        assert row(direct, marker) == ("p1", 1)
        assert client.execute("SELECT 3").fetchone() == (3,)

    # the record: the released statement is an allow naming the approval
    recorded = statement_events(gw, text)
    assert [s["payload"]["decision"]["verdict"] for s in recorded] == ["review", "review", "allow", "review", "review"], \
        [s["payload"]["decision"] for s in recorded]
    released = recorded[2]
    assert released["payload"]["decision"].get("approval") == approval_id
    assert result_of(gw, released)["payload"]["command_tag"] == "UPDATE 1"
    assert all("approval" not in s["payload"]["decision"] for i, s in enumerate(recorded) if i != 2)
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.decided", "approval.used"})
    assert [e["kind"] for e in trail] == ["approval.requested", "approval.decided", "approval.used"]
    assert trail[2]["payload"]["approval"]["status"] == "used"
    verify_chain(gw.store_path)


def test_a_pass_is_bound_to_the_parameters(start_gateway, mint, direct, app):
    """An approved p1 statement releases neither a p2 statement nor a different text."""
    gw, admin = start(start_gateway, hold="3s")
    marker = seed(direct, app)
    dba, agent = mint(**DBA), mint(**AGENT)
    with Client(gw, agent, app) as client:
        held = client.run(UPDATE_SQL, ("p1", marker))
        first = client.notices.next_approval()
        # Keep the pass for later: let the hold time out, then approve.
        assert isinstance(held.failed(10), psycopg.errors.InsufficientPrivilege)
        assert admin.decide(first, "approve", dba)[0] == 200

        for sql, params in ((UPDATE_SQL, ("p2", marker)),
                            (UPDATE_SQL + " AND level <> 'x'", ("p1", marker)),
                            (f"UPDATE events_log SET level = 'p1', payload = jsonb_build_object('n', (payload->>'n')::int + 1) "
                             f"WHERE message = '{marker}'", None)):
            other = client.run(sql, params)
            other_id = client.notices.next_approval()
            assert other_id != first, f"{sql} {params} was released by the pass for p1"
            assert admin.decide(other_id, "deny", dba, "no")[0] == 200
            other.failed(10)
        # the same statement by the same identity on another gateway connection (same database)
        with Client(gw, agent, dbname="appdb_md5") as elsewhere:
            other = elsewhere.run(UPDATE_SQL, ("p1", marker))
            other_id = elsewhere.notices.next_approval()
            assert other_id != first, "the pass is for the connection it was asked on"
            assert admin.get(other_id, dba)["connection"] == "appdb_md5"
            assert admin.decide(other_id, "deny", dba, "no")[0] == 200
            other.failed(10)
        assert row(direct, marker) == ("info", 0)
        assert admin.get(first, dba)["status"] == "approved", "the pass is still unused"
        assert client.execute(UPDATE_SQL, ("p1", marker)).rowcount == 1
        assert row(direct, marker) == ("p1", 1)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 4. who may decide


def test_who_may_list_and_decide(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="3s")
    marker = seed(direct, app)
    requester = mint(**AGENT_DBA)
    dba, dba2, oncall, auditor, agent = mint(**DBA), mint(**DBA2), mint(**ONCALL), mint(**AUDITOR), mint(**AGENT)

    status, body = admin.call("GET", "/healthz")
    assert status == 200, (status, body)

    with Client(gw, requester, app) as client:
        held = client.run(UPDATE_SQL, ("self", marker))
        approval_id = client.notices.next_approval()
        path = f"/api/v1/approvals/{approval_id}"

        # 401: no token, a malformed token, a token signed by an unknown key
        assert_api_error(admin.call("GET", "/api/v1/approvals?status=pending"), 401)
        assert_api_error(admin.call("GET", path, "not-a-jwt"), 401)
        assert_api_error(admin.decide(approval_id, "approve", None), 401)
        assert_api_error(admin.decide(approval_id, "approve", mint(**DBA, key="unpublished")), 401)
        assert_api_error(admin.decide(approval_id, "approve", mint(**DBA, aud="someone-else")), 401)
        assert_api_error(admin.decide(approval_id, "approve", mint(**DBA, exp_offset=-600)), 401)

        # the requester is in group dba too, and still may not approve its own statement
        assert_api_error(admin.decide(approval_id, "approve", requester), 403, "self_approval")
        assert_api_error(admin.decide(approval_id, "approve", mint(**AGENT_DBA)), 403, "self_approval")
        same_person = mint(sub="agent-dba-other-login", email=AGENT_DBA["email"], groups=["dba"])
        assert_api_error(admin.decide(approval_id, "approve", same_person), 403, "self_approval")
        refused = cli(admin, requester, "approve", approval_id)
        assert refused.returncode == 1 and refused.stderr.strip(), (refused.returncode, refused.stderr)
        # approver role, but not a group of this approval
        assert_api_error(admin.decide(approval_id, "approve", oncall), 403, "not_eligible")
        # no role at all
        assert_api_error(admin.decide(approval_id, "approve", agent), 403)
        assert_api_error(admin.call("GET", "/api/v1/approvals", agent), 403)
        # the auditor reads but does not decide
        assert approval_id in [a["id"] for a in admin.list(auditor, "pending")]
        assert admin.get(approval_id, auditor)["status"] == "pending"
        assert_api_error(admin.decide(approval_id, "approve", auditor), 403)
        assert_api_error(admin.decide(approval_id, "deny", auditor, "no"), 403)
        listed = approvals_in(cli_json(admin, auditor, "list", "--status", "pending", use_env=True))
        assert [a["id"] for a in listed] == [approval_id]
        refused = cli(admin, auditor, "approve", approval_id, use_env=True)
        assert refused.returncode == 1 and refused.stderr.strip(), (refused.returncode, refused.stderr)

        # unknown ids
        unknown = "00000000-0000-0000-0000-000000000000"
        assert_api_error(admin.call("GET", f"/api/v1/approvals/{unknown}", dba), 404)
        assert_api_error(admin.decide(unknown, "approve", dba), 404)
        assert cli(admin, dba, "show", unknown).returncode == 1

        # a denial needs a comment
        status, body = admin.decide(approval_id, "deny", dba)
        assert 400 <= status < 500 and status not in (401, 403, 404, 409), (status, body)
        assert_api_error((status, body), status)
        assert cli(admin, dba, "deny", approval_id).returncode != 0
        assert admin.get(approval_id, dba)["status"] == "pending", "refused decisions change nothing"
        assert admin.get(approval_id, dba)["decisions"] == []

        # a real approver denies; every later decision is a conflict
        status, body = admin.decide(approval_id, "deny", dba, "not by yourself")
        assert status == 200 and body["status"] == "denied", (status, body)
        assert_api_error(admin.decide(approval_id, "approve", dba2), 409)
        assert_api_error(admin.decide(approval_id, "approve", dba), 409)
        assert cli(admin, dba2, "approve", approval_id).returncode == 1

        error = held.failed(10)
        assert error.sqlstate == "42501"
        if error.diag.message_primary.startswith("statement denied"):
            assert_denied_by(error, approval_id, "dba@example.com", "not by yourself")
    assert row(direct, marker) == ("info", 0)
    assert [a["id"] for a in admin.list(dba, "denied")] == [approval_id]
    assert admin.list(dba, "pending") == []
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.decided"})
    assert [e["kind"] for e in trail] == ["approval.requested", "approval.decided"], "refused decisions are not recorded as decisions"
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 5. a restart


def test_a_pending_approval_survives_a_restart(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="3s")
    marker = seed(direct, app)
    dba = mint(**DBA)
    agent = mint(**AGENT)
    with Client(gw, agent, app) as client:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute(UPDATE_SQL, ("restart", marker))
        approval_id = client.notices.next_approval(timeout=0.1)
    assert admin.get(approval_id, dba)["status"] == "pending"

    assert gw.stop(timeout=10) == 0
    gw.log_path.rename(gw.directory / "custos.before-restart.log")   # the new process prints fresh ports
    gw.start()
    admin = Admin(gw)

    listed = approvals_in(cli_json(admin, dba, "list", "--status", "pending"))
    assert [a["id"] for a in listed] == [approval_id]
    assert listed[0]["requester"]["subject"] == "agent-1" and listed[0]["parameters"] == ["restart", marker]
    assert [a["id"] for a in admin.list(dba, "pending")] == [approval_id]
    approved = cli_json(admin, dba, "approve", approval_id, "--comment", "after the restart")
    assert approved["status"] == "approved"

    with Client(gw, agent, app) as client:
        assert client.execute(UPDATE_SQL, ("restart", marker)).rowcount == 1
        assert client.notices.approval_notices() == []
    assert row(direct, marker) == ("restart", 1)
    assert admin.get(approval_id, dba)["status"] == "used"
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.decided", "approval.used"})
    assert sorted(e["kind"] for e in trail) == ["approval.decided", "approval.requested", "approval.used"]
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 6. inside a transaction


def test_a_hold_timeout_fails_the_transaction_block(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="3s")
    marker = seed(direct, app)
    with Client(gw, mint(**AGENT), app, autocommit=False) as client:
        assert client.execute("SELECT 1").fetchone() == (1,)
        assert client.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as pending:
            client.execute(UPDATE_SQL, ("in-tx", marker))
        approval_id = client.notices.next_approval(timeout=0.1)
        assert "still pending" in pending.value.diag.message_primary
        assert pending.value.diag.message_detail == f"approval id: {approval_id}"
        assert client.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            client.execute("SELECT 2")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            client.execute("SELECT %s::int", (3,))
        client.conn.rollback()
        assert client.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert client.execute("SELECT 4").fetchone() == (4,)
        client.conn.rollback()

        # A denial while held fails the block the same way.
        held = client.run(UPDATE_SQL, ("in-tx-2", marker))
        second = client.notices.next_approval()
        assert admin.decide(second, "deny", mint(**DBA), "not now")[0] == 200
        assert_denied_by(held.failed(10), second, "dba@example.com", "not now")
        assert client.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            client.execute("SELECT 5")
        client.conn.rollback()
        assert client.execute("SELECT 6").fetchone() == (6,)
        client.conn.rollback()
    assert row(direct, marker) == ("info", 0)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 7. a dead webhook


def test_a_failing_webhook_does_not_delay_statements(start_gateway, mint, direct, app):
    dead = f"http://127.0.0.1:{closed_port()}/hook"
    gw, admin = start(start_gateway, hold="10s", webhooks=[dead])
    marker = seed(direct, app)
    dba = mint(**DBA)
    with Client(gw, mint(**AGENT), app) as client:
        began = time.monotonic()
        assert client.execute("SELECT 1").fetchone() == (1,)
        held = client.run(UPDATE_SQL, ("hooked", marker))
        # found through the list endpoint this time
        pending = wait_until(lambda: [a for a in admin.list(dba, "pending")
                                      if a["requester"]["subject"] == "agent-1" and a["parameters"] == ["hooked", marker]],
                             5, what="the held statement's approval in the pending list")
        assert len(pending) == 1
        approval_id = pending[0]["id"]
        assert client.notices.next_approval() == approval_id
        approved_at = time.monotonic()
        assert admin.decide(approval_id, "approve", dba, "fine")[0] == 200
        held.succeeded(8)
        assert held.rowcount == 1
        assert time.monotonic() - approved_at < 2, "the approved statement ran late (webhook retries in the way?)"
        assert time.monotonic() - began < 5

        # and again right away, while the first deliveries are still being retried
        second = client.run(UPDATE_SQL, ("hooked-2", marker))
        second_id = client.notices.next_approval(timeout=3)
        decided_at = time.monotonic()
        assert admin.decide(second_id, "approve", dba, "fine")[0] == 200
        second.succeeded(8)
        assert time.monotonic() - decided_at < 2
        assert client.execute("SELECT 2").fetchone() == (2,)
    assert row(direct, marker) == ("hooked-2", 2)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 8. expiry


def test_an_unapproved_approval_expires_after_its_ttl(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="1s", ttl="2s")
    marker = seed(direct, app)
    dba = mint(**DBA)
    with Client(gw, mint(**AGENT), app) as client:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute(UPDATE_SQL, ("late", marker))
        approval_id = client.notices.next_approval(timeout=0.1)
        wait_until(lambda: admin.get(approval_id, dba)["status"] == "expired", 10, what=f"approval {approval_id} to expire")
        assert_api_error(admin.decide(approval_id, "approve", dba, "too late"), 409)
        # the statement again: a new approval
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute(UPDATE_SQL, ("late", marker))
        renewed = client.notices.next_approval(timeout=0.1)
        assert renewed != approval_id
        # an approved pass nobody used expires as well, and then releases nothing
        assert admin.decide(renewed, "approve", dba, "use it soon")[0] == 200
        wait_until(lambda: admin.get(renewed, dba)["status"] == "expired", 10, what=f"pass {renewed} to expire")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.execute(UPDATE_SQL, ("late", marker))
        assert client.notices.next_approval(timeout=0.1) not in (approval_id, renewed)
    assert row(direct, marker) == ("info", 0)
    assert [e["kind"] for e in wait_kinds(gw, renewed, {"approval.expired"})] == [
        "approval.requested", "approval.decided", "approval.expired"]
    trail = wait_kinds(gw, approval_id, {"approval.requested", "approval.expired"})
    assert [e["kind"] for e in trail] == ["approval.requested", "approval.expired"]
    assert trail[1]["payload"]["approval"]["status"] == "expired"
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 9. more than one approval; any deny denies


def test_two_approvals_required_and_any_deny_denies(start_gateway, mint, direct, app):
    config = approval_config(hold="5s")
    config["policy"]["rules"][2]["required_approvals"] = 2
    gw = start_gateway(config)
    admin = Admin(gw)
    marker = seed(direct, app)
    dba, dba2 = mint(**DBA), mint(**DBA2)
    with Client(gw, mint(**AGENT), app) as client:
        held = client.run(UPDATE_SQL, ("two", marker))
        approval_id = client.notices.next_approval()
        status, body = admin.decide(approval_id, "approve", dba, "one")
        assert status == 200 and body["status"] == "pending" and body["required"] == 2 and len(body["decisions"]) == 1, (status, body)
        assert_api_error(admin.decide(approval_id, "approve", dba, "me again"), 409, "already_decided")
        time.sleep(0.3)
        assert held.is_alive(), "one approval of two does not release the statement"
        status, body = admin.decide(approval_id, "approve", dba2, "two")
        assert status == 200 and body["status"] in ("approved", "used"), (status, body)
        assert held.succeeded(10).rowcount == 1

        denied = client.run(UPDATE_SQL, ("two-b", marker))
        second = client.notices.next_approval()
        assert admin.decide(second, "approve", dba, "fine by me")[1]["status"] == "pending"
        status, body = admin.decide(second, "deny", dba2, "not by me")
        assert status == 200 and body["status"] == "denied", (status, body)
        assert_denied_by(denied.failed(10), second, "dba2@example.com", "not by me")
    assert row(direct, marker) == ("two", 1)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 10. the wire: what was sent behind a held statement waits; a client that leaves keeps its approval


def test_pipelined_queries_wait_and_a_dropped_client_keeps_its_approval(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="5s")
    marker = seed(direct, app)
    dba, agent = mint(**DBA), mint(**AGENT)
    update = (f"UPDATE events_log SET level = 'wire', payload = jsonb_build_object('n', (payload->>'n')::int + 1) "
              f"WHERE message = '{marker}'")

    def held_notice(wire: WireClient) -> str:
        kind, body = wire.recv()
        assert kind == b"N", (kind, body)
        notice = error_fields(body)
        match = NOTICE_RE.match(notice["M"])
        assert match and notice["S"] == "NOTICE" and notice["D"] == f"approval id: {match.group(1)}", notice
        return match.group(1)

    with WireClient(gw.port) as wire:
        assert wire.login(agent, app=app)[-1][0] == b"Z"
        wire.query(update)
        wire.query("SELECT 42")
        approval_id = held_notice(wire)
        wire.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            wire.recv()                       # nothing while held, not even the SELECT queued behind it
        wire.sock.settimeout(10)
        assert admin.decide(approval_id, "approve", dba)[0] == 200
        first = wire.recv_until([b"Z"])
        assert command_complete_tags(first) == ["UPDATE 1"], first
        second = wire.recv_until([b"Z"])
        assert command_complete_tags(second) == ["SELECT 1"], second
        assert [body for kind, body in second if kind == b"D"] == [b"\x00\x01\x00\x00\x00\x0242"]

    with WireClient(gw.port) as wire:
        assert wire.login(agent, app=app)[-1][0] == b"Z"
        wire.query(update)
        dropped_id = held_notice(wire)
    time.sleep(0.3)                            # the client is gone while its statement is held
    assert gw.alive()
    assert admin.get(dropped_id, dba)["status"] == "pending"
    assert admin.decide(dropped_id, "approve", dba, "run it when they come back")[0] == 200
    with Client(gw, agent, app) as client:
        assert client.execute(update).rowcount == 1
        assert client.notices.approval_notices() == []
    assert row(direct, marker) == ("wire", 2)
    assert admin.get(dropped_id, dba)["status"] == "used"
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 11. the gateway stops while a statement is held


def test_stopping_the_gateway_while_a_statement_is_held(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="30s")
    marker = seed(direct, app)
    dba, agent = mint(**DBA), mint(**AGENT)
    with Client(gw, agent, app) as client:
        held = client.run(UPDATE_SQL, ("stopped", marker))
        approval_id = client.notices.next_approval()
        began = time.monotonic()
        assert gw.stop(timeout=10) == 0
        assert time.monotonic() - began < 8, "a held statement must not keep the gateway from stopping"
        held.failed(10)                       # the session ended under it
    assert row(direct, marker) == ("info", 0)

    gw.log_path.rename(gw.directory / "custos.before-restart.log")
    gw.start()
    admin = Admin(gw)
    assert admin.get(approval_id, dba)["status"] == "pending"
    assert admin.decide(approval_id, "approve", dba)[0] == 200
    with Client(gw, agent, app) as client:
        assert client.execute(UPDATE_SQL, ("stopped", marker)).rowcount == 1
    assert row(direct, marker) == ("stopped", 1)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 12. pipeline mode (Parse/Bind/Execute for several statements, one Sync)


def test_a_held_statement_in_a_pipeline(start_gateway, mint, direct, app):
    gw, admin = start(start_gateway, hold="5s")
    marker = seed(direct, app)
    dba = mint(**DBA)
    with Client(gw, mint(**AGENT), app) as client:
        def pipelined(level: str) -> dict:
            out: dict = {}

            def work():
                try:
                    with client.conn.pipeline():
                        changed = client.conn.cursor()
                        changed.execute(UPDATE_SQL + " RETURNING (payload->>'n')::int", (level, marker))
                        after = client.conn.cursor()
                        after.execute("SELECT %s::int", (7,))
                    out["rows"] = (changed.fetchall(), after.fetchall())
                except BaseException as exc:  # noqa: BLE001
                    out["error"] = exc

            out["thread"] = threading.Thread(target=work, daemon=True)
            out["thread"].start()
            return out

        approved = pipelined("pipe-1")
        approval_id = client.notices.next_approval()
        assert admin.decide(approval_id, "approve", dba)[0] == 200
        approved["thread"].join(10)
        assert not approved["thread"].is_alive() and "error" not in approved, approved
        assert approved["rows"] == ([(1,)], [(7,)])

        denied = pipelined("pipe-2")
        denied_id = client.notices.next_approval()
        assert admin.decide(denied_id, "deny", dba, "no pipelines")[0] == 200
        denied["thread"].join(10)
        assert not denied["thread"].is_alive()
        assert isinstance(denied.get("error"), psycopg.errors.InsufficientPrivilege), denied
        assert_denied_by(denied["error"], denied_id, "dba@example.com", "no pipelines")
        assert client.execute("SELECT 1").fetchone() == (1,)
    assert row(direct, marker) == ("pipe-1", 1)
    verify_chain(gw.store_path)


# --------------------------------------------------------------------------
# 14. cancelling a held statement


def test_cancel_ends_a_held_statement_and_keeps_its_approval(start_gateway, mint, direct, app):
    """Ctrl-C (a CancelRequest with the key Custos gave the client) ends a held statement at
    once with 57014, as PostgreSQL ends a cancelled query; the approval stays pending, and once
    approved it is still a pass for the same statement."""
    gw, admin = start(start_gateway, hold="30s")
    marker = seed(direct, app)
    with Client(gw, mint(**AGENT), app) as client:
        held = client.run(UPDATE_SQL, ("cancelled", marker))
        approval_id = client.notices.next_approval()
        started = time.monotonic()
        client.conn.cancel_safe()
        error = held.failed(10)
        assert time.monotonic() - started < 5, "the cancel must not wait for the hold timeout"
        assert isinstance(error, psycopg.errors.QueryCanceled), error
        assert error.diag.message_detail == f"approval id: {approval_id} (still pending)"
        assert client.execute("SELECT 1").fetchone() == (1,), "the session goes on"
        assert admin.get(approval_id, mint(**DBA))["status"] == "pending"
        assert admin.decide(approval_id, "approve", mint(**DBA), "after all")[0] == 200
        ran = client.run(UPDATE_SQL, ("cancelled", marker)).succeeded(10)
        assert ran.rowcount == 1
    assert row(direct, marker) == ("cancelled", 1)
    verify_chain(gw.store_path)
