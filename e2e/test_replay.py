"""`custos replay`: record a session against one database, copy it (CREATE DATABASE … TEMPLATE),
change one row in the copy, replay the session against the copy marked `sandbox: true`, and check
that exactly the statements reading that row's changed value differ, writes are skipped unless
allowed (and only on a sandbox), denied statements are reported as not run, and rows shown are
masked by the viewer's own policy."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from custos_e2e import PostgresPeer

SETUP = """
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, owner_email text NOT NULL, qty int NOT NULL);
INSERT INTO items SELECT g, 'item ' || g, 'owner' || g || '@example.com', g * 10 FROM generate_series(1, 5) g;
CREATE SEQUENCE items_seq;
"""

# A session that tries to turn the replay's read-only session writable, or write through reads.
ESCAPES = [
    ("SET default_transaction_read_only = off", "skipped (write)"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "skipped (write)"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "skipped (write)"),
    ("BEGIN READ WRITE", "skipped (write)"),
    ("SELECT nextval('items_seq')", "skipped (write)"),
    ("COMMIT", "same"),
    ("SET search_path TO public", "same"),
    ("SELECT count(*) FROM items", "same"),
]

# (label, how it is sent, sql, params) in session order
STATEMENTS = [
    ("all-ordered", "simple", "SELECT id, name FROM items ORDER BY id", None),
    ("row-1", "simple", "SELECT name FROM items WHERE id = 1", None),
    ("count", "simple", "SELECT count(*) FROM items", None),
    ("row-3", "simple", "SELECT name, qty FROM items WHERE id = 3", None),
    ("ids-unordered", "simple", "SELECT id FROM items", None),
    ("write", "simple", "UPDATE items SET qty = qty WHERE id = 2", None),
    ("denied", "simple", "DELETE FROM items WHERE id = 5", None),
    ("param-binary", "extended", "SELECT name, qty FROM items WHERE id = %b", (1,)),
    ("param-row-3", "extended", "SELECT qty FROM items WHERE id = %s", (3,)),
]

EXPECTED = {
    "all-ordered": "different",
    "row-1": "same",
    "count": "same",
    "row-3": "different",
    "ids-unordered": "same rows, other order",  # the updated row moved to the end of the heap
    "write": "skipped (write)",
    "denied": "not run",
    "param-binary": "same",
    "param-row-3": "different",
}


def super_dsn(pg: PostgresPeer, dbname: str) -> str:
    return pg.direct_dsn("super", dbname=dbname)


@pytest.fixture(scope="module")
def recorded(pg, launcher, mint):
    suffix = uuid.uuid4().hex[:8]
    source, copy = f"replay_src_{suffix}", f"replay_copy_{suffix}"
    with psycopg.connect(super_dsn(pg, "postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {source}")
    with psycopg.connect(super_dsn(pg, source), autocommit=True) as conn:
        conn.execute(SETUP)
    base = {"host": pg.host, "port": pg.port, "user": "custos_super", "password_file": "secrets/super.pw",
            "sslmode": "disable", "allow_groups": ["agents", "dba"]}
    overrides = {
        "connections": {"src": {**base, "database": source},
                        "copy": {**base, "database": copy, "sandbox": True},
                        "copy_not_sandbox": {**base, "database": copy}},
        "policy": {
            "rules": [{"name": "no-deletes", "match": {"kinds": ["delete"]}, "action": "deny"},
                      {"name": "agents", "match": {"groups": ["agents", "dba"]}, "action": "allow"}],
            "masking": [{"name": "agents-pii", "match": {"groups": ["agents"]},
                         "columns": {"items.owner_email": "redact", "items.name": "partial"}}],
        },
    }
    gw = launcher.start(overrides, name="replay")
    token = mint(sub="replay-agent", groups=["agents"])
    with psycopg.connect(gw.dsn(token, dbname="src", app="replay-e2e"), autocommit=True) as conn:
        for label, channel, sql, params in STATEMENTS:
            try:
                if channel == "simple":
                    # psql would do too; a simple Query without parameters is what psycopg sends here
                    conn.pgconn.exec_(sql.encode())
                else:
                    with conn.cursor(binary=label == "param-binary") as cur:
                        cur.execute(sql, params)
                        cur.fetchall()
            except psycopg.Error:
                assert label == "denied", label
    session = gw.session_by_app("replay-e2e")
    rc = gw.stop()
    assert rc == 0
    # The copy: the source as recorded, then one row changed.
    with psycopg.connect(super_dsn(pg, "postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {copy} TEMPLATE {source}")
    with psycopg.connect(super_dsn(pg, copy), autocommit=True) as conn:
        conn.execute("UPDATE items SET name = 'changed', qty = 31 WHERE id = 3")
    # A second session, recorded after the copy was made: attempts to escape the read-only replay.
    gw.log_path.rename(gw.log_path.with_suffix(".first.log"))  # start() reads the port from a fresh log
    gw.start()
    with psycopg.connect(gw.dsn(token, dbname="src", app="replay-escapes"), autocommit=True) as conn:
        for sql, _ in ESCAPES:
            conn.pgconn.exec_(sql.encode())
    escapes = gw.session_by_app("replay-escapes")
    assert gw.stop() == 0
    gw.escapes_id = escapes["id"]
    yield gw, session["id"], mint
    with psycopg.connect(super_dsn(pg, "postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {copy}")
        admin.execute(f"DROP DATABASE IF EXISTS {source}")


def replay(gw, session_id: str, *args: str, check: bool = True):
    return gw.cli("replay", session_id, *args, check=check, timeout=60)


def by_label(result: dict) -> dict[str, dict]:
    statements = result["statements"]
    sent = [sql.replace("%b", "$1").replace("%s", "$1") for _, _, sql, _ in STATEMENTS]
    assert [s["text"] for s in statements] == sent, statements
    return {label: s for (label, _, _, _), s in zip(STATEMENTS, statements)}


def test_exactly_the_statements_reading_the_changed_row_differ(recorded):
    gw, session_id, _ = recorded
    result = json.loads(replay(gw, session_id, "--against", "copy", "--json").stdout)
    statements = by_label(result)
    assert {label: s["verdict"] for label, s in statements.items()} == EXPECTED
    for label, s in statements.items():
        if EXPECTED[label] == "same":
            assert s["replayed"]["digest"] == s["recorded"]["digest"], label
        if EXPECTED[label] == "different":
            assert s["replayed"]["digest"]["multiset"] != s["recorded"]["digest"]["multiset"], label
        if EXPECTED[label] in ("skipped (write)", "not run"):
            assert s["replayed"] is None, label
    assert statements["ids-unordered"]["replayed"]["digest"]["ordered"] != statements["ids-unordered"]["recorded"]["digest"]["ordered"]
    assert statements["param-binary"]["recorded"]["digest"] is not None


def test_against_the_source_everything_that_ran_is_the_same(recorded):
    gw, session_id, _ = recorded
    statements = by_label(json.loads(replay(gw, session_id, "--against", "src", "--json").stdout))
    for label, s in statements.items():
        want = EXPECTED[label] if EXPECTED[label] in ("skipped (write)", "not run") else "same"
        if label == "ids-unordered":
            want = "same rows, other order"  # the session's own UPDATE (after it) moved row 2 in the heap
        assert s["verdict"] == want, (label, s)


def test_writes_run_only_on_a_sandbox_and_only_when_allowed(recorded):
    gw, session_id, _ = recorded
    refused = replay(gw, session_id, "--against", "copy_not_sandbox", "--allow-writes", check=False)
    assert refused.returncode != 0
    assert "sandbox: true" in refused.stderr
    statements = by_label(json.loads(replay(gw, session_id, "--against", "copy", "--allow-writes", "--json").stdout))
    assert statements["write"]["verdict"] == "same", statements["write"]
    assert statements["denied"]["verdict"] == "not run"


def test_the_table_output_names_each_verdict(recorded):
    gw, session_id, _ = recorded
    out = replay(gw, session_id, "--against", "copy").stdout
    assert "different" in out and "same rows, other order" in out and "skipped (write)" in out
    assert "3 different" in out.splitlines()[-1]


def test_rows_shown_are_masked_by_the_viewers_policy(recorded):
    gw, session_id, mint = recorded
    refused = replay(gw, session_id, "--against", "copy", "--rows", "2", check=False)
    assert refused.returncode != 0 and "--token" in refused.stderr
    agent = mint(sub="analyst-agent", groups=["agents"])
    statements = by_label(json.loads(replay(gw, session_id, "--against", "copy", "--rows", "5", "--token", agent, "--json").stdout))
    names = [row[1] for row in statements["all-ordered"]["replayed"]["sample"]]
    assert names and all(name != f"item {i}" for i, name in enumerate(names, 1)), names
    dba = mint(sub="analyst-dba", groups=["dba"])
    statements = by_label(json.loads(replay(gw, session_id, "--against", "copy", "--rows", "5", "--token", dba, "--json").stdout))
    assert [row[1] for row in statements["all-ordered"]["replayed"]["sample"]] == ["item 1", "item 2", "changed", "item 4", "item 5"]


def test_a_replay_without_allow_writes_cannot_be_made_to_write(recorded, pg):
    gw, _, _ = recorded
    def sequence_state():
        with psycopg.connect(super_dsn(pg, gw.config["connections"]["copy"]["database"]), autocommit=True) as conn:
            return conn.execute("SELECT last_value, is_called FROM items_seq").fetchone()
    before = sequence_state()
    result = json.loads(replay(gw, gw.escapes_id, "--against", "copy", "--json").stdout)
    assert [(s["text"], s["verdict"]) for s in result["statements"]] == ESCAPES
    assert sequence_state() == before
