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
