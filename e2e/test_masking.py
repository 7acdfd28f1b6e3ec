"""Masking, end to end: what the client receives (psql, psycopg text/binary/prepared, COPY, JSON,
errors and notices), what the recording keeps (masked statements and samples, keyed digests of the
raw rows, no raw values or passwords anywhere in the store file or its WAL), the key files, and
`custos policy check --columns`. Unmasked columns are compared byte for byte with a direct
connection to the same database."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import re
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from custos_e2e import custos_bin, deep_merge

AGENTS_RULE = {
    "name": "agents", "match": {"groups": ["agents"]},
    "columns": {
        "customers.email": "hash",
        "customers.ssn": "redact",
        "customers.card_number": "partial",
        "public.customers.created_at": "redact",
        "events_log.payload": "redact",
    },
    "column_names": {"*password*": "redact"},
    "detectors": {"email": "redact", "card": "partial", "ssn": "redact", "phone": "partial", "iban": "partial",
                  "secret": "redact"},
}
MASKING = {"policy": {"masking": [
    # Only on the pgbench connection: never applies to appdb sessions.
    {"name": "pgbench-only", "match": {"connections": ["pgbench"]}, "columns": {"customers.full_name": "redact"}},
    # By subject, before the group rules: first match wins.
    {"name": "by-subject", "match": {"subjects": ["masked-sub"]},
     "columns": {"customers.full_name": "null", "customers.email": "partial"}},
    {"name": "auditors", "match": {"groups": ["auditors"]}, "columns": {"customers.ssn": "partial"}},
    AGENTS_RULE,
]}}

# Identities (the connections allow groups agents and dba; the base policy allows both).
AGENT = {"sub": "agent-1", "email": "agent@example.com", "groups": ["agents"]}
AUDITOR = {"sub": "auditor-1", "email": "auditor@example.com", "groups": ["auditors", "dba"]}
PLAIN = {"sub": "dba-1", "email": "dba@example.com", "groups": ["dba"]}        # no masking rule matches
BY_SUBJECT = {"sub": "masked-sub", "email": "masked@example.com", "groups": ["agents"]}

ALL_COLUMNS = ["id", "full_name", "email", "phone", "ssn", "card_number", "iban", "created_at"]
SELECT_ALL = "SELECT id, full_name, email, phone, ssn, card_number, iban, created_at FROM customers"

REDACTED = "[redacted]"


# --------------------------------------------------------------------------
# masking, recomputed independently


def key_bytes(path: Path) -> bytes:
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-fA-F]{64}\n", text), f"{path} does not hold 64 hex digits and a newline: {text!r}"
    return bytes.fromhex(text.strip())


def masking_key(gw) -> bytes:
    return key_bytes(gw.directory / "custos-masking.key")


def digest_key(gw) -> bytes:
    return key_bytes(gw.directory / "custos-digest.key")


def hashed(key: bytes, value: str) -> str:
    return "h:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def partial(value: str) -> str:
    """All ASCII letters/digits (and non-ASCII characters) but the last four become '*'."""
    def maskable(c: str) -> bool:
        return ord(c) >= 0x80 or c == "*" or (c.isascii() and c.isalnum())

    count = sum(1 for c in value if maskable(c))
    keep_from = count - 4 if count >= 5 else None
    out, k = [], 0
    for c in value:
        if maskable(c):
            out.append(c if keep_from is not None and k >= keep_from and c.isascii() and c.isalnum() else "*")
            k += 1
        else:
            out.append(c)
    return "".join(out)


def agent_view(key: bytes) -> dict:
    """What the agents rule does to each customers column (None = SQL NULL)."""
    return {
        "id": lambda v: v,
        "full_name": lambda v: v,                    # no rule, nothing detected
        "email": lambda v: hashed(key, v),
        "phone": partial,                            # detector phone: partial (the whole value is the span)
        "ssn": lambda v: REDACTED,
        "card_number": partial,
        "iban": partial,                             # detector iban: partial
        "created_at": lambda v: None,                # timestamptz: NULL whatever the strategy
    }


def masked_rows(rows: list[dict], columns: list[str], view: dict) -> list[tuple]:
    return [tuple(None if r[c] is None else view[c](r[c]) for c in columns) for r in rows]


# --------------------------------------------------------------------------
# digests (docs/evidence.md)


def row_encoding(values: list[bytes | None], formats: list[int]) -> bytes:
    out = struct.pack("!H", len(values))
    for value, fmt in zip(values, formats):
        out += struct.pack("!h", fmt)
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out


def digests(key: bytes, encoded_rows: list[bytes]) -> dict:
    ordered = hmac.new(key, b"custos.result.ordered.v1\n" + b"".join(encoded_rows), hashlib.sha256).hexdigest()
    total = sum(int.from_bytes(hmac.new(key, b"custos.result.row.v1\n" + r, hashlib.sha256).digest(), "big") for r in encoded_rows)
    return {"ordered": ordered, "multiset": f"{total % 2**256:064x}"}


# --------------------------------------------------------------------------
# raw results (bytes as the backend sends them)


def raw_result(conn: psycopg.Connection, sql: str, binary: bool = False) -> list[list[bytes | None]]:
    """The result's values as raw bytes, via libpq (extended protocol, unnamed statement)."""
    res = conn.pgconn.exec_params(sql.encode(), [], result_format=1 if binary else 0)
    assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
    return [[res.get_value(i, j) for j in range(res.nfields)] for i in range(res.ntuples)]


def raw_copy(conn: psycopg.Connection, sql: str) -> list[bytes]:
    """Each CopyData payload of a COPY TO STDOUT."""
    chunks = []
    with conn.cursor().copy(sql) as copy:
        for data in copy:
            chunks.append(bytes(data))
    return chunks


# --------------------------------------------------------------------------
# the recording


def recorded(gw, app: str) -> list[tuple[dict, dict | None]]:
    """(statement payload, result payload) for each statement of the session with application_name app."""
    shown = gw.show(gw.session_by_app(app)["id"])
    statements = {e["payload"]["statement"]: e["payload"] for e in shown["events"] if e["kind"] == "statement"}
    results = {e["payload"]["statement"]: e["payload"] for e in shown["events"] if e["kind"] == "result"}
    return [(statements[n], results.get(n)) for n in sorted(statements)]


DIAG_FIELDS = ("severity", "sqlstate", "message_primary", "message_detail", "message_hint", "context",
               "schema_name", "table_name", "column_name", "datatype_name", "constraint_name", "internal_query")


def diag_text(diag) -> str:
    return "\n".join(f"{name}={getattr(diag, name)}" for name in DIAG_FIELDS)


def store_bytes(gw) -> dict[str, bytes]:
    out = {}
    for path in gw.store_path.parent.glob(gw.store_path.name + "*"):
        out[path.name] = path.read_bytes()
    return out


def run_check(gw, *args):
    done = subprocess.run([str(custos_bin()), "policy", "check", "--config", str(gw.config_path), *args],
                          capture_output=True, text=True, timeout=30)
    out = json.loads(done.stdout) if done.returncode == 0 and "--json" in args else done.stdout
    return done.returncode, out, done.stderr


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def masked_holder(launcher):
    """One gateway with the masking rules above, shared by this module's read-only tests. A gateway
    that died (a crash fails the test that caused it) is replaced, so one crash does not fail the rest."""
    holder = {"gw": launcher.start(MASKING, name="masking"), "launcher": launcher}
    yield holder
    gw = holder["gw"]
    if gw.alive():   # a crash already failed the test that caused it
        rc = gw.stop(timeout=10)
        assert rc == 0, f"custos serve exited {rc} after SIGTERM:\n{gw.log()[-3000:]}"


@pytest.fixture
def masked(masked_holder):
    gw = masked_holder["gw"]
    if not gw.alive():
        masked_holder["gw"] = gw = masked_holder["launcher"].start(MASKING, name="masking")
    yield gw
    assert gw.alive(), f"the gateway died during this test:\n{gw.log()[-6000:]}"


@pytest.fixture(scope="module")
def customers(pg):
    """The first 30 customers as a direct connection reads them."""
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        rows = cur.execute(SELECT_ALL + " WHERE id <= 30 ORDER BY id").fetchall()
    assert len(rows) == 30
    return rows


def connect(gw, mint, who: dict, app: str | None = None, **kw) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(mint(**who), app=app), autocommit=True, **kw)


# --------------------------------------------------------------------------
# 1. what the client receives


def test_psql_text_result_is_masked(masked, mint, customers):
    key = masking_key(masked)
    out = masked.psql(mint(**AGENT), "-A", "-t", "-F", "|", "-P", "null=<NULL>", "-c",
                      SELECT_ALL + " WHERE id <= 10 ORDER BY id")
    assert out.returncode == 0, out.stderr
    expected = ["|".join("<NULL>" if v is None else str(v) for v in row)
                for row in masked_rows(customers[:10], ALL_COLUMNS, agent_view(key))]
    assert out.stdout.splitlines() == expected
    # spot checks of each form, independent of the helper above
    first = customers[0]
    fields = out.stdout.splitlines()[0].split("|")
    assert fields[2] == "h:" + hmac.new(key, first["email"].encode(), hashlib.sha256).hexdigest()[:16]
    assert fields[4] == "[redacted]"
    assert fields[5] == "*" * 12 + first["card_number"][-4:]
    assert fields[3] == "+*-***-***-" + first["phone"][-4:]
    assert fields[6] == "*" * (len(first["iban"]) - 4) + first["iban"][-4:]
    assert fields[7] == "<NULL>"
    for raw in (first["email"], first["ssn"], first["card_number"], first["phone"], first["iban"]):
        assert raw not in out.stdout


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_psycopg_text_result_is_masked(masked, mint, customers, mode):
    view = agent_view(masking_key(masked))
    expected = masked_rows(customers[:10], ALL_COLUMNS, view)
    with connect(masked, mint, AGENT) as conn:
        for _ in range(3):  # prepared: the statement is reused
            if mode == "simple":
                rows = conn.execute(SELECT_ALL + " WHERE id <= 10 ORDER BY id").fetchall()
            else:
                rows = conn.execute(SELECT_ALL + " WHERE id <= %s ORDER BY id", (10,), prepare=(mode == "prepared")).fetchall()
            assert rows == expected


@pytest.mark.parametrize("prepare", [False, True], ids=["unnamed", "prepared"])
def test_psycopg_binary_result_is_masked_and_decodable(masked, mint, customers, prepare):
    view = agent_view(masking_key(masked))
    expected = masked_rows(customers[:10], ALL_COLUMNS, view)
    with connect(masked, mint, AGENT) as conn:
        cur = conn.cursor(binary=True)
        for _ in range(3):
            rows = cur.execute(SELECT_ALL + " WHERE id <= %s ORDER BY id", (10,), prepare=prepare).fetchall()
            assert [d.name for d in cur.description] == ALL_COLUMNS
            assert rows == expected


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_unmasked_columns_are_byte_identical_to_a_direct_query(masked, mint, pg, customers, binary):
    key = masking_key(masked)
    sql = "SELECT c.id, c.full_name, c.email, o.id, o.amount, o.currency, o.status, o.created_at " \
          "FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id <= 20 ORDER BY o.id"
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        want = raw_result(direct, sql, binary)
    with connect(masked, mint, AGENT) as conn:
        got = raw_result(conn, sql, binary)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and g[3:] == w[3:], "columns no rule names must pass untouched"
        assert g[2] == hashed(key, w[2].decode()).encode()


def test_aliases_subqueries_and_expressions(masked, mint, customers):
    key = masking_key(masked)
    c = customers[2]
    with connect(masked, mint, AGENT) as conn:
        row = conn.execute("SELECT email AS e, ssn AS s, x.card_number AS cc FROM customers x WHERE id = 3").fetchone()
        assert row == (hashed(key, c["email"]), REDACTED, partial(c["card_number"]))
        # the origin survives a subquery in FROM
        row = conn.execute("SELECT sub.mail FROM (SELECT email AS mail FROM customers WHERE id = 3) sub").fetchone()
        assert row == (hashed(key, c["email"]),)
        # an expression is no column: no table rule names it, the detectors look at it
        row = conn.execute("SELECT lower(email), upper(ssn), 'card ' || card_number FROM customers WHERE id = 3").fetchone()
        assert row == ("[redacted:email]", "[redacted:ssn]", "card " + partial(c["card_number"]))
        # detectors inside a longer value keep the rest of it
        row = conn.execute("SELECT 'write to ' || email || ' or call ' || phone FROM customers WHERE id = 3").fetchone()
        assert row == (f"write to [redacted:email] or call {partial(c['phone'])}",)


def test_auditors_see_ssn_partial_and_the_rest_raw(masked, mint, customers):
    with connect(masked, mint, AUDITOR) as conn:
        rows = conn.execute(SELECT_ALL + " WHERE id <= 10 ORDER BY id").fetchall()
        binary = conn.cursor(binary=True).execute(SELECT_ALL + " WHERE id <= %s ORDER BY id", (10,)).fetchall()
    expected = [tuple(partial(r[c]) if c == "ssn" else r[c] for c in ALL_COLUMNS) for r in customers[:10]]
    assert rows == expected and binary == expected
    assert expected[0][4].endswith(customers[0]["ssn"][-4:]) and expected[0][4].startswith("***-*")


def test_first_matching_rule_applies_by_subject(masked, mint, customers):
    with connect(masked, mint, BY_SUBJECT) as conn:
        rows = conn.execute("SELECT full_name, email, ssn FROM customers WHERE id <= 5 ORDER BY id").fetchall()
    # the by-subject rule, not the agents rule: full_name NULL, email partial, ssn raw (no detectors)
    assert rows == [(None, partial(r["email"]), r["ssn"]) for r in customers[:5]]


def test_identity_matching_no_rule_sees_raw_values(masked, mint, pg, customers):
    with connect(masked, mint, PLAIN) as conn:
        rows = conn.execute(SELECT_ALL + " WHERE id <= 30 ORDER BY id").fetchall()
        got = raw_result(conn, SELECT_ALL + " WHERE id <= 30 ORDER BY id", binary=True)
    assert rows == [tuple(r[c] for c in ALL_COLUMNS) for r in customers]
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        assert got == raw_result(direct, SELECT_ALL + " WHERE id <= 30 ORDER BY id", binary=True)


def test_column_name_patterns_and_secret_detector(masked, mint, pg, app):
    table = f"e2e_mask_accounts_{os.getpid()}"
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        direct.execute(f"DROP TABLE IF EXISTS {table}")
        direct.execute(f"CREATE TABLE {table} (id int, login text, user_password text, note text)")
        direct.execute(f"INSERT INTO {table} VALUES (1, 'alice', 'hunter2-very-long', 'password=abc123xyz; ok')")
    try:
        with connect(masked, mint, AGENT) as conn:
            for binary in (False, True):
                row = conn.cursor(binary=binary).execute(f"SELECT id, login, user_password, note FROM {table}").fetchone()
                assert row == (1, "alice", REDACTED, "password=[redacted:secret]; ok")
            assert conn.execute("SELECT 'plain' AS db_password").fetchone() == (REDACTED,)
        with connect(masked, mint, PLAIN) as conn:
            assert conn.execute(f"SELECT user_password, note FROM {table}").fetchone() == (
                "hunter2-very-long", "password=abc123xyz; ok")
    finally:
        with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
            direct.execute(f"DROP TABLE IF EXISTS {table}")


# --------------------------------------------------------------------------
# 2. COPY


def test_copy_table_to_stdout_text_is_masked(masked, mint, pg, app):
    key = masking_key(masked)
    sql = "COPY customers TO STDOUT"
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        raw = raw_copy(direct, sql)
    with connect(masked, mint, AGENT, app=app) as conn:
        got = raw_copy(conn, sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert len(got) == len(raw) >= 200
    view = agent_view(key)
    for g, r in zip(got, raw):
        row = dict(zip(ALL_COLUMNS, r.decode().rstrip("\n").split("\t")))
        expected = [row["id"], row["full_name"], view["email"](row["email"]), view["phone"](row["phone"]),
                    REDACTED, partial(row["card_number"]), partial(row["iban"])]
        fields = g.decode().split("\t")
        assert g.endswith(b"\n") and len(fields) == 8, g
        assert fields[:7] == expected, f"raw row: {r!r}"
        assert row["created_at"] not in g.decode()
    # the record: one row per CopyData, one column of format 0, digested raw
    (statement, result), = [(s, r) for s, r in recorded(masked, app) if s["text"] == sql]
    assert result["rows"] == len(raw)
    assert result["digest"] == digests(digest_key(masked), [row_encoding([r], [0]) for r in raw])
    dumped = json.dumps(result)
    assert all(v not in dumped for v in raw[0].decode().split("\t")[2:7])


def test_copy_non_text_column_masked_is_null(masked, mint, pg):
    """A masked timestamptz in COPY text output is \\N, so a client decoding the COPY with the column
    types (psycopg set_types) accepts every row, as with DataRows."""
    sql = "COPY customers TO STDOUT"
    with connect(masked, mint, AGENT) as conn:
        got = raw_copy(conn, sql)
        assert got[0].decode().rstrip("\n").split("\t")[7] == "\\N", got[0]
        with conn.cursor().copy(sql) as copy:
            copy.set_types(["int4", "text", "text", "text", "text", "text", "text", "timestamptz"])
            rows = list(copy.rows())
    assert len(rows) == len(got) and rows[0][7] is None and rows[0][4] == REDACTED


def test_copy_query_to_stdout_csv_with_header(masked, mint, customers):
    key = masking_key(masked)
    sql = "COPY (SELECT email, ssn, full_name FROM customers WHERE id <= 30 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
    expected = [["email", "ssn", "full_name"]] + [[hashed(key, r["email"]), REDACTED, r["full_name"]] for r in customers]
    with connect(masked, mint, AGENT) as conn:
        text = b"".join(raw_copy(conn, sql)).decode()
    assert list(csv.reader(io.StringIO(text))) == expected
    # psql: COPY … TO STDOUT and \copy
    for command in (sql, "\\copy (SELECT email, ssn, full_name FROM customers WHERE id <= 30 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"):
        out = masked.psql(mint(**AGENT), "-c", command)
        assert out.returncode == 0, out.stderr
        assert list(csv.reader(io.StringIO(out.stdout))) == expected
        for r in customers:
            assert r["email"] not in out.stdout and r["ssn"] not in out.stdout


def test_copy_csv_quoting_survives_masking(masked, mint, customers):
    """A CSV field that needs quotes before and after masking stays one field."""
    c = customers[4]
    sql = ("COPY (SELECT id, 'said \"hi\", wrote ' || email AS note, email FROM customers WHERE id = 5) "
           "TO STDOUT WITH (FORMAT csv)")
    with connect(masked, mint, AGENT) as conn:
        text = b"".join(raw_copy(conn, sql)).decode()
    assert list(csv.reader(io.StringIO(text))) == [["5", 'said "hi", wrote [redacted:email]', hashed(masking_key(masked), c["email"])]]


def test_binary_copy_is_refused_when_masking_applies(masked, mint):
    with connect(masked, mint, AGENT) as conn:
        for sql in ("COPY customers TO STDOUT (FORMAT binary)",
                    "COPY (SELECT email FROM customers) TO STDOUT WITH (FORMAT binary)"):
            with pytest.raises(psycopg.Error) as refused:
                with conn.cursor().copy(sql) as copy:
                    for _ in copy:
                        pass
            assert refused.value.sqlstate == "0A000", refused.value
            assert conn.execute("SELECT 1").fetchone() == (1,)
    # nothing to mask for this identity: binary COPY works
    with connect(masked, mint, PLAIN) as conn:
        data = b"".join(raw_copy(conn, "COPY (SELECT id FROM customers WHERE id <= 3) TO STDOUT (FORMAT binary)"))
        assert data.startswith(b"PGCOPY\n\xff\r\n\x00")


def test_catalog_lookups_from_sessions_on_every_event_loop(start_gateway, mint, pg, customers):
    """Sessions land on different event loops; each COPY TO looks its columns up in the catalog
    (by table name, by describing the query) and a new table's OID is resolved: whichever loop asks,
    the gateway answers and stays up."""
    gw = start_gateway(MASKING)
    key = masking_key(gw)
    table = f"e2e_mask_catalog_{os.getpid()}"
    sessions = [connect(gw, mint, AGENT) for _ in range(2 * (os.cpu_count() or 2) + 2)]
    try:
        for i, conn in enumerate(sessions):
            with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
                direct.execute(f"DROP TABLE IF EXISTS {table}_{i}")
                direct.execute(f"CREATE TABLE {table}_{i} AS SELECT id, email FROM customers WHERE id <= 2")
            text = b"".join(raw_copy(conn, "COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT")).decode()
            assert text == hashed(key, customers[0]["email"]) + "\n"
            text = b"".join(raw_copy(conn, "COPY customers (id, email) TO STDOUT")).decode()
            assert text.startswith(f"1\t{hashed(key, customers[0]['email'])}\n")
            # a table the catalog has not seen: its OID is looked up (detectors apply, no table rule)
            rows = conn.execute(f"SELECT email FROM {table}_{i} ORDER BY id").fetchall()
            assert rows == [("[redacted:email]",), ("[redacted:email]",)]
            assert gw.alive(), f"the gateway died at session {i}:\n{gw.log()[-6000:]}"
    finally:
        for conn in sessions:
            conn.close()
        with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
            for i in range(len(sessions)):
                direct.execute(f"DROP TABLE IF EXISTS {table}_{i}")


# --------------------------------------------------------------------------
# 3. errors and notices


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_unique_violation_detail_is_redacted(masked, mint, customers, prepare):
    email = customers[5]["email"]
    with connect(masked, mint, AGENT) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            if prepare:
                conn.execute("INSERT INTO customers (full_name, email) VALUES (%s, %s)", ("Dup E2E", email), prepare=True)
            else:
                conn.execute(f"INSERT INTO customers (full_name, email) VALUES ('Dup E2E', '{email}')")
        assert dup.value.diag.message_detail == "Key (email)=([redacted]) already exists."
        assert email not in str(dup.value) and email not in diag_text(dup.value.diag)
        assert conn.execute("SELECT count(*) FROM customers WHERE id <= 30").fetchone() == (30,)
    # in a transaction: the block fails, ROLLBACK recovers it
    with psycopg.connect(masked.dsn(mint(**AGENT))) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            conn.execute("INSERT INTO customers (full_name, email) VALUES (%s, %s)", ("Dup E2E", email))
        assert dup.value.diag.message_detail == "Key (email)=([redacted]) already exists."
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # for an identity no rule masks, PostgreSQL's detail goes through as is
    with connect(masked, mint, PLAIN) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            conn.execute("INSERT INTO customers (full_name, email) VALUES (%s, %s)", ("Dup E2E", email))
        assert dup.value.diag.message_detail == f"Key (email)=({email}) already exists."


def test_not_null_violation_detail_is_redacted(masked, mint):
    with connect(masked, mint, AGENT) as conn:
        with pytest.raises(psycopg.errors.NotNullViolation) as failed:
            conn.execute("INSERT INTO customers (full_name, email, ssn) VALUES (NULL, 'nn.e2e@example.com', '123-45-6789')")
        detail = failed.value.diag.message_detail or ""
        assert detail.startswith("Failing row contains (") and "[redacted" in detail, detail
        assert "nn.e2e@example.com" not in str(failed.value) and "123-45-6789" not in detail
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_detectors_mask_error_and_notice_fields(masked, mint):
    notices = []
    with connect(masked, mint, AGENT) as conn:
        # a Diagnostic is only valid during the callback: copy its fields
        conn.add_notice_handler(lambda d: notices.append({f: getattr(d, f) for f in DIAG_FIELDS}))
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as bad:
            conn.execute("SELECT 'reach me at +1-202-555-0199 or x.y@example.org'::int")
        assert bad.value.diag.message_primary == \
            'invalid input syntax for type integer: "reach me at +*-***-***-0199 or [redacted:email]"'
        conn.execute("DO $$ BEGIN RAISE NOTICE 'contact %', 'olivia.e2e@example.org' "
                     "USING HINT = 'ssn 123-45-6789', DETAIL = 'card 4111 1111 1111 1111'; END $$")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert len(notices) == 1
    notice = notices[0]
    assert notice["message_primary"] == "contact [redacted:email]"
    assert notice["message_hint"] == "ssn [redacted:ssn]"
    assert notice["message_detail"] == "card **** **** **** 1111"
    assert "olivia.e2e@example.org" not in json.dumps(notice)


# --------------------------------------------------------------------------
# 4. the store holds no raw value and no password


PASSWORDS = ["Zq9-unique-Secret-77", "Zq9-unique-Secret-78", "Zq9-unique-Secret-79", "Zq9-unique-Secret-80"]


def test_store_and_wal_hold_no_raw_values_or_passwords(start_gateway, mint, customers, app):
    gw = start_gateway(MASKING)
    key = masking_key(gw)
    c7, c8, c9 = customers[6], customers[7], customers[8]
    with connect(gw, mint, AGENT, app=app + "-a") as conn:
        conn.execute(SELECT_ALL + " WHERE id <= 30 ORDER BY id").fetchall()
        conn.cursor(binary=True).execute(SELECT_ALL + " WHERE id <= %s ORDER BY id", (30,)).fetchall()
        conn.execute(f"SELECT * FROM customers WHERE email = '{c7['email']}'").fetchall()
        conn.execute("SELECT id FROM customers WHERE email = %s AND ssn = %s", (c8["email"], c8["ssn"]), prepare=True).fetchall()
        conn.execute(f"SELECT id FROM customers WHERE card_number IN ('{c9['card_number']}') OR phone = '{c9['phone']}'").fetchall()
        conn.execute(f"UPDATE customers SET email = '{c9['email']}', iban = '{c9['iban']}' WHERE id = -1")
        raw_copy(conn, "COPY (SELECT * FROM customers WHERE id <= 30) TO STDOUT")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"INSERT INTO customers (full_name, email, ssn) VALUES ('Dup', '{c7['email']}', '{c7['ssn']}')")
        # passwords: the role does not exist / custos_scram may not create roles; either way they reach no record
        for sql in (f"ALTER ROLE e2e_mask_no_such_role PASSWORD '{PASSWORDS[0]}'",
                    f"CREATE ROLE e2e_mask_new_role LOGIN PASSWORD '{PASSWORDS[1]}'",
                    f"ALTER USER e2e_mask_no_such_role WITH ENCRYPTED PASSWORD '{PASSWORDS[2]}'"):
            with pytest.raises(psycopg.Error):
                conn.execute(sql)
        conn.execute("SELECT 1")
    with connect(gw, mint, PLAIN, app=app + "-p") as conn:   # no masking rule: passwords still masked
        with pytest.raises(psycopg.Error):
            conn.execute(f"ALTER ROLE e2e_mask_no_such_role PASSWORD '{PASSWORDS[3]}'")

    secrets = PASSWORDS + [r[c] for r in customers for c in ("email", "ssn", "card_number", "phone", "iban")]

    def assert_clean(files: dict[str, bytes], when: str) -> None:
        assert any(name.endswith(".sqlite") for name in files)
        for name, data in files.items():
            found = [s for s in secrets if s.encode() in data]
            assert not found, f"{when}: {name} holds raw values: {found[:5]}"

    statements = recorded(gw, app + "-a")   # waits for the session to be recorded as closed
    recorded(gw, app + "-p")
    assert_clean(store_bytes(gw), "while the gateway runs")
    for password in PASSWORDS:
        assert password not in gw.log()

    by_text = {s["text"]: s for s, _ in statements}
    h7, h8, h9 = hashed(key, c7["email"]), hashed(key, c8["email"]), hashed(key, c9["email"])
    assert by_text[f"SELECT * FROM customers WHERE email = '{h7}'"]["text_masked"] is True
    prepared = by_text["SELECT id FROM customers WHERE email = $1 AND ssn = $2"]
    assert prepared["parameters"] == [h8, REDACTED] and prepared["text_masked"] is True
    assert by_text[f"SELECT id FROM customers WHERE card_number IN ('{partial(c9['card_number'])}') "
                   f"OR phone = '{partial(c9['phone'])}'"]["text_masked"] is True
    assert by_text[f"UPDATE customers SET email = '{h9}', iban = '{partial(c9['iban'])}' WHERE id = -1"]["text_masked"] is True
    assert by_text[f"INSERT INTO customers (full_name, email, ssn) VALUES ('Dup', '{h7}', '[redacted]')"]["text_masked"] is True
    assert by_text["ALTER ROLE e2e_mask_no_such_role PASSWORD '[redacted]'"]["text_masked"] is True
    assert by_text["CREATE ROLE e2e_mask_new_role LOGIN PASSWORD '[redacted]'"]["text_masked"] is True
    assert by_text["ALTER USER e2e_mask_no_such_role WITH ENCRYPTED PASSWORD '[redacted]'"]["text_masked"] is True
    assert by_text["SELECT 1"]["text_masked"] is False
    assert by_text[SELECT_ALL + " WHERE id <= 30 ORDER BY id"]["text_masked"] is False
    plain = [s for s, _ in recorded(gw, app + "-p")]
    assert [s["text"] for s in plain] == ["ALTER ROLE e2e_mask_no_such_role PASSWORD '[redacted]'"]
    assert plain[0]["text_masked"] is True

    assert gw.stop() == 0
    assert_clean(store_bytes(gw), "after the gateway stopped")


# --------------------------------------------------------------------------
# 5. the result record: columns, masked sample, digests of the raw rows


def test_result_record_sample_and_digests(start_gateway, mint, pg, customers, app):
    gw = start_gateway(MASKING)
    key, dkey = masking_key(gw), digest_key(gw)
    asc = "SELECT email, ssn, full_name FROM customers WHERE id <= 30 ORDER BY id"
    desc = "SELECT email, ssn, full_name FROM customers WHERE id <= 30 ORDER BY id DESC"
    binary_sql = "SELECT id, email, created_at FROM customers WHERE id <= 3 ORDER BY id"
    extended_sql = "SELECT email, ssn, full_name FROM customers WHERE id <= %s ORDER BY id"
    with connect(gw, mint, AGENT, app=app) as conn:
        conn.execute(asc).fetchall()
        conn.execute(desc).fetchall()
        conn.cursor(binary=True).execute(binary_sql).fetchall()
        conn.execute(extended_sql, (5,)).fetchall()
        conn.execute("SELECT 1 WHERE false").fetchall()
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        raw_asc, raw_desc = raw_result(direct, asc), raw_result(direct, desc)
        raw_bin = raw_result(direct, binary_sql, binary=True)
        raw_ext = raw_result(direct, extended_sql % 5)

    rec = {s["text"]: r for s, r in recorded(gw, app)}
    r_asc, r_desc, r_bin = rec[asc], rec[desc], rec[binary_sql]
    assert r_asc["columns"] == [{"name": "email", "type": 25, "format": 0}, {"name": "ssn", "type": 25, "format": 0},
                                {"name": "full_name", "type": 25, "format": 0}]
    assert r_asc["rows"] == 30 and r_asc["command_tag"] == "SELECT 30"
    assert r_asc["sample"] == [[hashed(key, c["email"]), REDACTED, c["full_name"]] for c in customers[:20]]
    assert r_desc["sample"] == [[hashed(key, c["email"]), REDACTED, c["full_name"]] for c in customers[::-1][:20]]

    enc_asc = [row_encoding(r, [0, 0, 0]) for r in raw_asc]
    enc_desc = [row_encoding(r, [0, 0, 0]) for r in raw_desc]
    assert r_asc["digest"] == digests(dkey, enc_asc)
    assert r_desc["digest"] == digests(dkey, enc_desc)
    assert r_asc["digest"]["multiset"] == r_desc["digest"]["multiset"]
    assert r_asc["digest"]["ordered"] != r_desc["digest"]["ordered"]
    assert re.fullmatch(r"[0-9a-f]{64}", r_asc["digest"]["ordered"]) and re.fullmatch(r"[0-9a-f]{64}", r_asc["digest"]["multiset"])

    # binary: sample values as \x hex of what the client received; digests over the backend's binary bytes
    assert r_bin["rows"] == 3
    assert r_bin["sample"] == [["\\x" + struct.pack("!i", c["id"]).hex(), "\\x" + hashed(key, c["email"]).encode().hex(), None]
                               for c in customers[:3]]
    assert r_bin["digest"] == digests(dkey, [row_encoding(r, [1, 1, 1]) for r in raw_bin])
    assert raw_bin[0][2] is not None, "the digest covers the raw timestamp the client never saw"
    # extended protocol, text format
    r_ext = rec[extended_sql.replace("%s", "$1")]
    assert r_ext["sample"] == [[hashed(key, c["email"]), REDACTED, c["full_name"]] for c in customers[:5]]
    assert r_ext["digest"] == digests(dkey, [row_encoding(r, [0, 0, 0]) for r in raw_ext])
    # the columns, as the backend described them (Describe portal in the extended protocol)
    assert r_ext["columns"] == r_asc["columns"]
    assert r_bin["columns"] == [{"name": "id", "type": 23, "format": 1}, {"name": "email", "type": 25, "format": 1},
                                {"name": "created_at", "type": 1184, "format": 1}]
    empty = rec["SELECT 1 WHERE false"]
    assert empty["rows"] == 0 and empty["sample"] == []
    assert empty["digest"] == digests(dkey, [])


def test_sample_rows_setting_and_unmasked_identity(start_gateway, mint, pg, customers, app):
    gw = start_gateway(deep_merge(MASKING, {"recording": {"sample_rows": 3}}))
    sql = "SELECT id, email, ssn FROM customers WHERE id <= 30 ORDER BY id"
    with connect(gw, mint, PLAIN, app=app) as conn:
        conn.execute(sql).fetchall()
    with psycopg.connect(pg.direct_dsn(), autocommit=True) as direct:
        raw = raw_result(direct, sql)
    (_, result), = [(s, r) for s, r in recorded(gw, app) if s["text"] == sql]
    assert result["sample"] == [[str(c["id"]), c["email"], c["ssn"]] for c in customers[:3]]
    assert result["rows"] == 30
    assert result["digest"] == digests(digest_key(gw), [row_encoding(r, [0, 0, 0]) for r in raw])


# --------------------------------------------------------------------------
# 6. key files


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_created_0600_and_kept(launcher, mint):
    gw = launcher.prepare(MASKING, name="keys")
    digest, masking = gw.directory / "custos-digest.key", gw.directory / "custos-masking.key"
    assert not digest.exists() and not masking.exists()
    os.environ["CUSTOS_E2E_SCRAM_PW"] = launcher.pg.password("scram")
    gw.start()
    try:
        for path in (digest, masking):
            assert mode_of(path) == 0o600, oct(mode_of(path))
            assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text()), path.read_text()
        assert digest.read_text() != masking.read_text()
        before = (digest.read_text(), masking.read_text())
        for text in before:
            assert text.strip() not in gw.log()
        with connect(gw, mint, AGENT) as conn:
            first = conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0]
    finally:
        assert gw.stop() == 0
    gw.log_path.rename(gw.directory / "custos-first-run.log")   # Gateway.start looks for "listening on" in the log
    gw.start()
    try:
        assert (digest.read_text(), masking.read_text()) == before, "an existing key is never replaced"
        with connect(gw, mint, AGENT) as conn:
            assert conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0] == first, "hashes are stable across restarts"
    finally:
        assert gw.stop() == 0


def test_key_file_paths_from_config(start_gateway):
    gw = start_gateway(deep_merge(MASKING, {"keys": {"digest_file": "keys/digest.key", "masking_file": "keys/masking.key"}}))
    for name in ("digest.key", "masking.key"):
        path = gw.directory / "keys" / name
        assert mode_of(path) == 0o600 and re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    assert not (gw.directory / "custos-digest.key").exists() and not (gw.directory / "custos-masking.key").exists()


def serve_refused(gw, launcher, attempts: int = 3) -> str:
    """Runs `custos serve` on a config it must refuse, a few times (a crash on the way out may be
    intermittent); each run must end with a config error, not a crash. Returns the last stderr."""
    gw.write_config()
    os.environ["CUSTOS_E2E_SCRAM_PW"] = launcher.pg.password("scram")
    stderr = ""
    for attempt in range(attempts):
        try:
            done = subprocess.run([str(custos_bin()), "serve", "--config", str(gw.config_path)],
                                  capture_output=True, text=True, timeout=40, cwd=gw.directory)
        except subprocess.TimeoutExpired:
            pytest.fail("custos serve accepted the config and kept running")
        stderr = done.stderr
        assert "listening on" not in stderr + done.stdout
        crashed = done.returncode < 0 or "Program crashed" in stderr or "Fatal error" in stderr
        assert not crashed, f"attempt {attempt + 1}: custos serve crashed (exit {done.returncode}) instead of " \
                            f"reporting the config error:\n{stderr[:3000]}"
        assert done.returncode != 0
    return stderr


@pytest.mark.parametrize("which,mode", [("masking", 0o640), ("digest", 0o604)])
def test_key_file_readable_by_others_refuses_to_start(launcher, which, mode):
    gw = launcher.prepare(MASKING, name="badkey")
    path = gw.directory / f"custos-{which}.key"
    secret = os.urandom(32).hex()
    path.write_text(secret + "\n")
    os.chmod(path, mode)
    stderr = serve_refused(gw, launcher)
    assert f"keys.{which}_file" in stderr, stderr
    assert secret not in stderr
    assert mode_of(path) == mode, "the gateway must not change the operator's file"


def test_malformed_key_file_refuses_to_start(launcher):
    gw = launcher.prepare(MASKING, name="badkey")
    path = gw.directory / "custos-masking.key"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    assert "keys.masking_file" in serve_refused(gw, launcher)


# --------------------------------------------------------------------------
# 7. policy check --columns


def test_policy_check_reports_masking(launcher):
    gw = launcher.prepare(MASKING)
    gw.write_config()
    columns = "customers.email,customers.ssn,orders.amount,public.customers.created_at,customers.card_number"
    rc, out, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb", "--columns", columns, "--json")
    assert rc == 0, err
    assert out["masking"] == {"customers.email": "hash", "customers.ssn": "redact", "orders.amount": "detect",
                              "public.customers.created_at": "redact", "customers.card_number": "partial"}
    assert out["masking_rule"] == "agents"
    rc, out, err = run_check(gw, "--sub", "auditor-1", "--groups", "auditors,dba", "--connection", "appdb",
                             "--columns", "customers.email,customers.ssn", "--json")
    assert rc == 0, err
    assert (out["masking"], out["masking_rule"]) == ({"customers.email": "none", "customers.ssn": "partial"}, "auditors")
    rc, out, err = run_check(gw, "--sub", "dba-1", "--groups", "dba", "--connection", "appdb",
                             "--columns", "customers.email", "--json")
    assert rc == 0, err
    assert (out["masking"], out["masking_rule"]) == ({"customers.email": "none"}, None)
    rc, out, err = run_check(gw, "--sub", "masked-sub", "--groups", "agents", "--connection", "appdb",
                             "--columns", "customers.full_name,customers.email", "--json")
    assert (rc, out["masking"], out["masking_rule"]) == (0, {"customers.full_name": "null", "customers.email": "partial"}, "by-subject")
    rc, out, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "pgbench",
                             "--columns", "customers.full_name", "--json")
    assert (rc, out["masking"], out["masking_rule"]) == (0, {"customers.full_name": "redact"}, "pgbench-only")
    # with --sql too: the statement decision and the masking side by side
    rc, out, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb",
                             "--sql", "SELECT email FROM customers", "--columns", "customers.email", "--json")
    assert rc == 0, err
    assert out["decision"] == "allow" and out["masking"] == {"customers.email": "hash"}
    # plain text output
    rc, out, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb", "--columns", "customers.email")
    assert rc == 0 and "agents" in out and "customers.email: hash" in out, (out, err)


@pytest.mark.parametrize("spec", ["customers", "a.b.c.d", "customers.", ".email"])
def test_policy_check_bad_column_spec_exits_2(launcher, spec):
    gw = launcher.prepare(MASKING)
    gw.write_config()
    rc, _, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb", "--columns", spec, "--json")
    assert rc == 2, err
    assert "--columns" in err


def test_policy_check_needs_sql_or_columns(launcher):
    gw = launcher.prepare(MASKING)
    gw.write_config()
    rc, _, err = run_check(gw, "--sub", "agent-1", "--groups", "agents", "--connection", "appdb", "--json")
    assert rc != 0 and "--sql" in err


# --------------------------------------------------------------------------
# 8. JSON columns


def test_json_values_stay_json(masked, mint, customers):
    email = customers[0]["email"]
    with connect(masked, mint, AGENT) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            for fn in ("json_build_object", "jsonb_build_object"):
                (value,) = cur.execute(f"SELECT {fn}('contact', email) AS j FROM customers ORDER BY id LIMIT 1").fetchone()
                assert isinstance(value, (str, dict)), (fn, binary, value)
                text = value if isinstance(value, str) else json.dumps(value)
                assert email not in text and "[redacted:email]" in text, (fn, binary, value)
            # a column rule on a jsonb column gives a JSON string
            rows = cur.execute("SELECT payload FROM events_log ORDER BY id LIMIT 3").fetchall()
            assert rows == [(REDACTED,)] * 3, (binary, rows)
            # nothing detected: the value goes as is
            assert cur.execute("SELECT json_build_object('n', id) FROM customers WHERE id = 1").fetchone() == ({"n": 1},)
            assert cur.execute("SELECT jsonb_build_object('n', 2, 'ok', true)").fetchone() == ({"n": 2, "ok": True},)


# --------------------------------------------------------------------------
# 9. a large result streams


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RssSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def test_large_result_streams_with_flat_memory(start_gateway, mint, app):
    gw = start_gateway(MASKING)
    pid = gw.proc.pid
    n = 200_000
    with connect(gw, mint, AGENT, app=app) as conn:
        conn.execute("SELECT 1")
        before = rss_kb(pid)
        with RssSampler(pid) as sampler:
            count = 0
            cur = conn.cursor()
            for g, value in cur.stream("SELECT g, md5(g::text) || '@example.com' FROM generate_series(1, 200000) g"):
                count += 1
                assert g == count
                if value != "[redacted:email]":
                    raise AssertionError(f"row {g}: {value!r} is not masked")
        assert count == n
    peak = max(sampler.peak, rss_kb(pid))
    print(f"RSS before {before // 1024} MB, peak {peak // 1024} MB")
    assert peak < 300 * 1024, f"gateway RSS peaked at {peak // 1024} MB (started at {before // 1024} MB)"
    (_, result), = [(s, r) for s, r in recorded(gw, app) if "generate_series" in s["text"]]
    assert result["rows"] == n and len(result["sample"]) == 20
    assert result["sample"][0] == ["1", "[redacted:email]"]


def test_slow_client_does_not_make_the_gateway_buffer(start_gateway, mint):
    """A result far larger than the memory bound, read slowly: the gateway must apply backpressure
    (stop reading from PostgreSQL while the client is behind), not queue the result in memory."""
    gw = start_gateway(MASKING)
    pid = gw.proc.pid
    rows = 100_000   # ~1 KB a row: ~100 MB of result
    sql = f"SELECT g, repeat(md5(g::text), 32) || ' note' FROM generate_series(1, {rows}) g"
    with connect(gw, mint, AGENT) as conn:
        conn.execute("SELECT 1")
        before = rss_kb(pid)
        with RssSampler(pid) as sampler:
            count = 0
            for g, value in conn.cursor().stream(sql):
                count += 1
                if count == 1000:
                    time.sleep(4)    # PostgreSQL could send everything meanwhile
                    stalled = rss_kb(pid)
            assert count == rows
    peak = max(sampler.peak, rss_kb(pid))
    print(f"RSS before {before // 1024} MB, while stalled {stalled // 1024} MB, peak {peak // 1024} MB")
    assert stalled - before < 50 * 1024, f"RSS grew by {(stalled - before) // 1024} MB while the client stalled"
    assert peak < 300 * 1024, f"gateway RSS peaked at {peak // 1024} MB"
