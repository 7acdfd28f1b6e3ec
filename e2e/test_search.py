"""Searching the recording: `custos sessions list` filters (identity, connection, time, decision,
full text, table) alone and combined, the same search through the admin API with its roles,
`custos sessions export --format jsonl`, and the `tables` of statement events.

One gateway with its own store: every query's answer is compared with EXACTLY the expected set of
sessions."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from custos_e2e import Gateway, custos_bin, http_json, read_events, wait_until

ADMIN_RE = re.compile(r"custos: admin API listening on 127\.0\.0\.1:(\d+)")

SEARCH_CONFIG = {
    "policy": {"rules": [
        {"name": "no-orders", "match": {"tables": ["orders"]}, "action": "deny", "message": "orders are off limits"},
        # review without approvers refuses at once (docs/policy.md), recorded with the verdict review
        {"name": "writes-review", "match": {"kinds": ["insert", "update", "delete"]}, "action": "review",
         "message": "writes need an approval"},
        {"name": "reads", "match": {"groups": ["agents"], "read_only": True}, "action": "allow"},
    ]},
    "admin": {"host": "127.0.0.1", "port": 0,
              "roles": {"approver": ["dba"], "auditor": ["auditors"], "admin": ["platform"]}},
}

ALICE = {"sub": "search-alice", "email": "alice@search.example", "groups": ["agents"]}
BOB = {"sub": "search-bob", "email": "bob@search.example", "groups": ["agents"]}
CAROL = {"sub": "search-carol", "email": "carol@search.example", "groups": ["agents"]}

# session name -> (identity, connection, [(sql, verdict)])
PLAN = {
    "s1": (ALICE, "appdb", [("SELECT full_name FROM customers WHERE id = 1", "allow"),
                            ("SELECT 'amber falcon' AS note", "allow")]),
    "s2": (ALICE, "appdb", [("SELECT id FROM orders WHERE id = 1", "deny"),
                            ("SELECT 'amber' AS a", "allow"),
                            ("SELECT 'falcon' AS f", "allow")]),
    "s3": (BOB, "appdb", [("SELECT count(*) FROM public.customers", "allow"),
                          ("DELETE FROM events_log WHERE message = 'ghost heron'", "review")]),
    "s4": (BOB, "pgbench", [("SELECT 'falcons ambers' AS x", "allow"),
                            ("SELECT 1", "allow")]),
    # s5 starts after a pause, for the time filters
    "s5": (CAROL, "appdb", [("SELECT 'Amber  FALCON' AS shout", "allow")]),
}
TABLES = {
    "SELECT full_name FROM customers WHERE id = 1": ["customers"],
    "SELECT count(*) FROM public.customers": ["public.customers"],
    "SELECT id FROM orders WHERE id = 1": ["orders"],
    "DELETE FROM events_log WHERE message = 'ghost heron'": ["events_log"],
    "SELECT 'amber falcon' AS note": [],
}


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class World:
    gw: Gateway
    ids: dict[str, str]
    cut: str            # between s4 and s5 (whole seconds)
    url: str


@pytest.fixture(scope="module")
def world(launcher, mint):
    gw = launcher.start(SEARCH_CONFIG, name="search")
    try:
        ids: dict[str, str] = {}
        tag = uuid.uuid4().hex[:8]
        cut = ""
        for name, (who, connection, statements) in PLAN.items():
            if name == "s5":
                # a whole-second boundary strictly after s1..s4 started and before s5 starts
                boundary = math.floor(time.time()) + 1
                cut = rfc3339(datetime.fromtimestamp(boundary, timezone.utc))
                time.sleep(max(0.0, boundary + 0.2 - time.time()))
            app = f"e2e-search-{name}-{tag}"
            with psycopg.connect(gw.dsn(mint(**who), dbname=connection, app=app), autocommit=True) as conn:
                for sql, verdict in statements:
                    if verdict == "allow":
                        conn.execute(sql).fetchall()
                    else:
                        with pytest.raises(psycopg.errors.InsufficientPrivilege):
                            conn.execute(sql)
            ids[name] = gw.session_by_app(app)["id"]
        # The search index follows the record in batches (within about 250 ms): wait until the last
        # session's statement is searchable, and with it everything before it.
        wait_until(lambda: ids["s5"] in [s["id"] for s in gw.sessions("--text", "shout")], 10, what="the search index")
        match = wait_until(lambda: ADMIN_RE.search(gw.log()), 15, what="the admin API")
        yield World(gw, ids, cut, f"http://127.0.0.1:{match.group(1)}")
    finally:
        rc = gw.stop(timeout=15)
    assert rc == 0, f"custos serve exited {rc}:\n{gw.log()[-3000:]}"


def listed(world: World, *args: str) -> list[str]:
    sessions = world.gw.sessions(*args)
    ids = [s["id"] for s in sessions]
    assert len(ids) == len(set(ids)), f"a session listed twice: {ids}"
    return ids


def names(world: World, ids: list[str]) -> set[str]:
    back = {v: k for k, v in world.ids.items()}
    unknown = [i for i in ids if i not in back]
    assert not unknown, f"sessions nobody made in this test: {unknown}"
    return {back[i] for i in ids}


def expect(world: World, args: tuple[str, ...], expected: set[str]) -> None:
    got = names(world, listed(world, *args))
    assert got == expected, f"custos sessions list {' '.join(args)}: got {sorted(got)}, expected {sorted(expected)}"


# The filters and the sessions each must return (identical through the CLI and the API).
def cases(world: World) -> list[tuple[dict, set[str]]]:
    every = set(PLAN)
    hour_ago = rfc3339(datetime.now(timezone.utc) - timedelta(hours=1))
    return [
        ({}, every),
        ({"identity": "alice@search.example"}, {"s1", "s2"}),
        ({"identity": "search-bob"}, {"s3", "s4"}),
        ({"identity": "carol@search.example"}, {"s5"}),
        ({"identity": "nobody@search.example"}, set()),
        ({"connection": "pgbench"}, {"s4"}),
        ({"connection": "appdb"}, {"s1", "s2", "s3", "s5"}),
        ({"since": world.cut}, {"s5"}),
        ({"until": world.cut}, {"s1", "s2", "s3", "s4"}),
        ({"since": hour_ago}, every),
        ({"until": hour_ago}, set()),
        ({"decision": "deny"}, {"s2"}),
        ({"decision": "review"}, {"s3"}),
        ({"decision": "allow"}, {"s1", "s2", "s3", "s4", "s5"}),
        # all words in one statement, whole tokens, any case
        ({"text": "amber falcon"}, {"s1", "s5"}),
        ({"text": "FALCON Amber"}, {"s1", "s5"}),
        ({"text": "falcon"}, {"s1", "s2", "s5"}),
        ({"text": "falcons"}, {"s4"}),
        ({"text": "amb"}, set()),
        ({"text": "heron ghost"}, {"s3"}),          # a refused statement's text is searchable too
        ({"text": "orders"}, {"s2"}),
        ({"text": "customers"}, {"s1", "s3"}),
        ({"text": "zzzunheardof"}, set()),
        # tables from the parser's analysis; `customers` matches public.customers too, any case
        ({"table": "customers"}, {"s1", "s3"}),
        ({"table": "CUSTOMERS"}, {"s1", "s3"}),
        ({"table": "orders"}, {"s2"}),
        ({"table": "events_log"}, {"s3"}),
        ({"table": "no_such_table"}, set()),
        # combinations: AND
        ({"identity": "search-alice", "text": "amber falcon"}, {"s1"}),
        ({"identity": "search-bob", "decision": "review"}, {"s3"}),
        ({"identity": "search-bob", "decision": "deny"}, set()),
        ({"table": "customers", "decision": "review"}, {"s3"}),
        ({"table": "customers", "identity": "alice@search.example"}, {"s1"}),
        ({"decision": "allow", "since": world.cut}, {"s5"}),
        ({"text": "falcon", "until": world.cut}, {"s1", "s2"}),
        # each filter selects sessions, and the selections intersect: s2's denied statement is not the
        # one that says falcon or amber, yet s2 has both
        ({"text": "falcon", "connection": "appdb", "decision": "deny"}, {"s2"}),
        ({"table": "orders", "text": "amber"}, {"s2"}),
    ]


def cli_args(query: dict) -> tuple[str, ...]:
    out: list[str] = []
    for k, v in query.items():
        out += [f"--{k}", v]
    return tuple(out)


def test_statement_events_carry_their_tables(world):
    by_text = {}
    for e in read_events(world.gw.store_path):
        if e["kind"] == "statement":
            payload = json.loads(e["payload"])
            by_text[payload["text"]] = payload
    for text, tables in TABLES.items():
        assert text in by_text, f"no statement event for {text!r}"
        assert by_text[text]["tables"] == tables, (text, by_text[text])
    for payload in by_text.values():
        assert payload["tables"] == sorted(payload["tables"])
    verdicts = {text: verdict for _, _, statements in PLAN.values() for text, verdict in statements}
    for text, verdict in verdicts.items():
        assert by_text[text]["decision"]["verdict"] == verdict, by_text[text]


def test_each_filter_returns_exactly_the_expected_sessions_in_the_cli(world):
    for query, expected in cases(world):
        expect(world, cli_args(query), expected)


def test_the_cli_takes_durations_ago(world):
    expect(world, ("--since", "1h"), set(PLAN))
    expect(world, ("--until", "1h"), set())
    expect(world, ("--since", "1h", "--text", "amber falcon"), {"s1", "s5"})


def test_the_combined_filters_also_keep_newest_first(world):
    sessions = world.gw.sessions("--text", "falcon")
    started = [s["started_at"] for s in sessions]
    assert started == sorted(started, reverse=True)


def test_the_text_filter_is_in_the_help(world):
    done = subprocess.run([str(custos_bin()), "sessions", "list", "--help"], capture_output=True, text=True, timeout=30)
    for flag in ("--decision", "--text", "--table"):
        assert flag in done.stdout, done.stdout


def test_bad_filter_values_are_refused_by_the_cli(world):
    for args in (("--decision", "maybe"), ("--since", "yesterday-ish")):
        done = world.gw.cli("sessions", "list", "--json", *args, check=False)
        assert done.returncode != 0, (args, done.stdout)
        assert done.stderr.strip(), args


# --------------------------------------------------------------------------
# the admin API


def api(world: World, path: str, token: str | None = None) -> tuple[int, object]:
    return http_json(world.url + path, token)


def api_sessions(world: World, token: str, query: dict) -> list[dict]:
    path = "/api/v1/sessions" + ("?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else "")
    status, body = api(world, path, token)
    assert status == 200, (path, status, body)
    assert isinstance(body, dict) and isinstance(body.get("sessions"), list), body
    return body["sessions"]


@pytest.fixture(scope="module")
def auditor(mint):
    return mint(sub="search-auditor", email="auditor@search.example", groups=["auditors"])


def test_each_filter_returns_exactly_the_expected_sessions_in_the_api(world, auditor):
    for query, expected in cases(world):
        found = api_sessions(world, auditor, query)
        ids = [s["id"] for s in found]
        assert len(ids) == len(set(ids))
        assert names(world, ids) == expected, f"GET /api/v1/sessions?{urllib.parse.urlencode(query)}: {sorted(names(world, ids))}"


def test_api_query_plus_is_a_space(world, auditor):
    """A form-encoded query (urlencode, URLSearchParams, HTML forms) writes a space as '+'."""
    status, body = api(world, "/api/v1/sessions?text=FALCON+Amber", auditor)
    assert status == 200, (status, body)
    assert names(world, [s["id"] for s in body["sessions"]]) == {"s1", "s5"}, body


def test_api_sessions_are_the_cli_objects(world, auditor):
    assert api_sessions(world, auditor, {}) == world.gw.sessions()
    assert api_sessions(world, auditor, {"text": "falcon"}) == world.gw.sessions("--text", "falcon")
    limited = api_sessions(world, auditor, {"limit": "2"})
    assert [s["id"] for s in limited] == [s["id"] for s in world.gw.sessions()][:2]


def test_api_session_detail(world, auditor):
    sid = world.ids["s3"]
    status, body = api(world, f"/api/v1/sessions/{sid}", auditor)
    assert status == 200, (status, body)
    assert set(body) >= {"session", "events"}, body
    [summary] = [s for s in world.gw.sessions() if s["id"] == sid]
    assert body["session"]["id"] == sid
    assert {k: body["session"][k] for k in summary} == summary
    stored = [e for e in read_events(world.gw.store_path) if e["session_id"] == sid]
    assert [(e["writer_id"], e["seq"], e["hash"]) for e in body["events"]] == [(e["writer_id"], e["seq"], e["hash"]) for e in stored]
    for got, want in zip(body["events"], stored):
        payload = got["payload"]
        assert payload == want["payload"] or payload == json.loads(want["payload"]), (got, want)


def test_api_roles(world, mint, auditor):
    admin = mint(sub="search-admin", email="admin@search.example", groups=["platform"])
    approver = mint(sub="search-dba", email="dba@search.example", groups=["dba"])
    agent = mint(**ALICE)
    sid = world.ids["s1"]
    for path in ("/api/v1/sessions", f"/api/v1/sessions/{sid}"):
        assert api(world, path)[0] == 401, path
        assert api(world, path, "not-a-token")[0] == 401, path
        assert api(world, path, mint(**{**ALICE, "groups": ["auditors"]}, tamper=True))[0] == 401, path
        assert api(world, path, approver)[0] == 403, path
        assert api(world, path, agent)[0] == 403, path
        assert api(world, path, auditor)[0] == 200, path
        assert api(world, path, admin)[0] == 200, path


def test_api_rejects_bad_filters(world, auditor):
    for query in ({"decision": "maybe"}, {"since": "not-a-time"}, {"until": "tomorrow-ish"}):
        status, body = api(world, "/api/v1/sessions?" + urllib.parse.urlencode(query), auditor)
        assert status == 400, (query, status, body)
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
        assert isinstance(body["error"].get("message"), str), body


def test_evidence_key_needs_no_token(world):
    status, body = api(world, "/api/v1/evidence/key")
    assert status == 200, (status, body)
    assert body["algorithm"] == "Ed25519" and re.fullmatch(r"[0-9a-f]{64}", body["public_key"]), body
    writers = {e["writer_id"] for e in read_events(world.gw.store_path)}
    assert writers == {body["writer_id"]}


# --------------------------------------------------------------------------
# export


def test_sessions_export_jsonl_matches_the_store(world, tmp_path):
    sid = world.ids["s2"]
    stored = [e for e in read_events(world.gw.store_path) if e["session_id"] == sid]
    assert [e["kind"] for e in stored][0] == "session.open" and stored[-1]["kind"] == "session.close"
    out = world.gw.cli("sessions", "export", sid, "--format", "jsonl").stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines == stored
    for line in out.splitlines():
        assert set(json.loads(line)) == {"writer_id", "seq", "at", "session_id", "kind", "payload", "payload_hash",
                                         "prev_hash", "hash"}
    target = tmp_path / "s2.jsonl"
    world.gw.cli("sessions", "export", sid, "--format", "jsonl", "-o", str(target))
    assert [json.loads(line) for line in target.read_text().splitlines() if line.strip()] == stored
    unknown = world.gw.cli("sessions", "export", "00000000-0000-0000-0000-000000000000", "--format", "jsonl", check=False)
    assert unknown.returncode != 0
