"""A prepared statement's name stands for what the backend prepared, never for a Parse or PREPARE
the backend refused: redefining a name (a duplicate), or a name whose Parse failed, must not let
a write run as if it were the read the gateway analysed. Raw wire, so the exact messages and
their order are under the test's control."""

from __future__ import annotations

import struct

import pytest

from custos_e2e import WireClient, command_complete_tags, errors_in
from test_policy import STRICT


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, sql: str) -> tuple[bytes, bytes]:
    return b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0)


def bind(portal: str, statement: str) -> tuple[bytes, bytes]:
    return b"B", cstr(portal) + cstr(statement) + struct.pack("!hhh", 0, 0, 0)


def execute(portal: str = "") -> tuple[bytes, bytes]:
    return b"E", cstr(portal) + struct.pack("!i", 0)


SYNC = (b"S", b"")


def exchange(wire: WireClient, *messages: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    for type_, body in messages:
        wire.send(type_, body)
    return wire.recv_until([b"Z"])


@pytest.fixture
def strict(start_gateway):
    return start_gateway(STRICT)


def login(wire: WireClient, token: str) -> None:
    messages = wire.login(token)
    assert not errors_in(messages), messages


def test_a_refused_redefinition_does_not_rename_a_write(strict, mint, direct):
    marker = "prepared-duplicate"
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        # s1 is a DELETE at the backend (a Parse is not a statement yet: nothing is decided).
        first = exchange(wire, parse("s1", f"DELETE FROM events_log WHERE message = '{marker}'"), SYNC)
        assert [t for t, _ in first] == [b"1", b"Z"], first
        # Redefining s1 as a read: the backend refuses the duplicate name and keeps the DELETE.
        second = exchange(wire, parse("s1", "SELECT 1"), SYNC)
        assert errors_in(second)[0]["C"] == "42P05", second
        # Executing s1 must be decided as what the backend holds (unknown here: denied), never as the read.
        third = exchange(wire, bind("", "s1"), execute(), SYNC)
        assert not any(tag.startswith("DELETE") for tag in command_complete_tags(third)), third
        assert "42501" in [error["C"] for error in errors_in(third)], third


def test_a_name_whose_parse_failed_stands_for_nothing(strict, mint):
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        failed = exchange(wire, parse("s2", "SELECT * FROM no_such_table_anywhere"), SYNC)
        assert errors_in(failed)[0]["C"] == "42P01", failed
        # The name never existed at the backend: whatever it is used for is unknown, so denied.
        used = exchange(wire, bind("", "s2"), execute(), SYNC)
        assert not command_complete_tags(used), used
        assert "42501" in [error["C"] for error in errors_in(used)], "the Execute is denied as opaque"


def test_a_refused_sql_prepare_does_not_rename_a_write(strict, mint, direct, app):
    marker = "sql-prepare-duplicate"
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        # PREPARE of a DELETE is a delete (policy: review, so refused); PREPARE of a read succeeds.
        ok = exchange(wire, (b"Q", cstr("PREPARE p AS SELECT 1")))
        assert not errors_in(ok), ok
        # A second PREPARE p (of anything) is refused by the backend: p stays the read.
        dup = exchange(wire, (b"Q", cstr("PREPARE p AS SELECT 2")))
        assert errors_in(dup)[0]["C"] == "42P05", dup
        run = exchange(wire, (b"Q", cstr("EXECUTE p")))
        assert not errors_in(run) and command_complete_tags(run) == ["SELECT 1"], run
        # A PREPARE the backend refuses (an unknown table) defines nothing: EXECUTE of it is opaque, denied.
        bad = exchange(wire, (b"Q", cstr("PREPARE q AS SELECT * FROM no_such_table_anywhere")))
        assert errors_in(bad)[0]["C"] == "42P01", bad
        denied = exchange(wire, (b"Q", cstr("EXECUTE q")))
        assert errors_in(denied)[0]["C"] == "42501", denied


def close_statement(name: str) -> tuple[bytes, bytes]:
    return b"C", b"S" + cstr(name)


def test_names_that_differ_only_in_unicode_normalization_are_two_statements(strict, mint, direct):
    """PostgreSQL compares statement names byte for byte; "sé" composed and decomposed are two
    names, and closing or defining one must not touch what the gateway knows of the other."""
    composed, decomposed = "s\u00e9", "se\u0301"
    marker = "prepared-unicode"
    with direct() as conn:
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        defined = exchange(wire, parse(decomposed, f"DELETE FROM events_log WHERE message = '{marker}'"), SYNC)
        assert [t for t, _ in defined] == [b"1", b"Z"], defined
        # Closing the composed name (the backend has none; not an error) leaves the decomposed DELETE.
        closed = exchange(wire, close_statement(composed), SYNC)
        assert [t for t, _ in closed] == [b"3", b"Z"], closed
        read = exchange(wire, parse(composed, "SELECT 1"), SYNC)
        assert [t for t, _ in read] == [b"1", b"Z"], read
        # The decomposed name is the DELETE: decided as a write (review, no approver: refused).
        write = exchange(wire, bind("", decomposed), execute(), SYNC)
        assert not any(tag.startswith("DELETE") for tag in command_complete_tags(write)), write
        assert errors_in(write), write
        # The composed name is the read, and runs.
        ran = exchange(wire, bind("", composed), execute(), SYNC)
        assert command_complete_tags(ran) == ["SELECT 1"], ran
    with direct() as conn:
        assert conn.execute("SELECT count(*) FROM events_log WHERE message = %s", (marker,)).fetchone()[0] == 1


def test_a_name_that_is_not_utf8_is_a_protocol_violation(strict, mint):
    """Names are compared as the gateway decodes them: two invalid byte sequences must not become
    one name, so a name that is not UTF-8 ends the session (as the backend would refuse it)."""
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        for type_, body in ((b"P", b"s\xff\0SELECT 1\0" + struct.pack("!h", 0)), SYNC):
            wire.send(type_, body)
        messages, eof = wire.recv_all()
    assert eof, messages
    assert [(e["S"], e["C"]) for e in errors_in(messages)] == [("FATAL", "08P01")], messages


PREPARE_ALLOWED = {"policy": {"rules": [
    {"name": "deny-flagged", "match": {"flags": ["destructive", "privileged", "opaque", "unparseable"]}, "action": "deny"},
    {"name": "agents-read", "match": {"groups": ["agents"], "read_only": True}, "action": "allow"},
    {"name": "agents-prepare", "match": {"groups": ["agents"], "kinds": ["prepare", "deallocate"]}, "action": "allow"},
]}}


def test_sql_deallocate_forgets_a_parsed_name_too(start_gateway, mint, direct):
    """PREPARE and Parse share one namespace at the backend: after DEALLOCATE s3 and PREPARE s3 AS
    a DELETE, an Execute of s3 must not be decided as the read s3 was Parse'd as."""
    gateway = start_gateway(PREPARE_ALLOWED)
    marker = "deallocate-namespace"
    with direct() as conn:
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
    with WireClient(gateway.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        assert [t for t, _ in exchange(wire, parse("s3", "SELECT 1"), SYNC)] == [b"1", b"Z"]
        assert not errors_in(exchange(wire, (b"Q", cstr("DEALLOCATE s3"))))
        prepared = exchange(wire, (b"Q", cstr(f"PREPARE s3 AS DELETE FROM events_log WHERE message = '{marker}'")))
        assert not errors_in(prepared), prepared
        run = exchange(wire, bind("", "s3"), execute(), SYNC)
        assert not any(tag.startswith("DELETE") for tag in command_complete_tags(run)), run
        assert "42501" in [error["C"] for error in errors_in(run)], run
    with direct() as conn:
        assert conn.execute("SELECT count(*) FROM events_log WHERE message = %s", (marker,)).fetchone()[0] == 1
