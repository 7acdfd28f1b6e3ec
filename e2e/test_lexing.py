"""Custos reads SQL as libpg_query does: standard-conforming strings, UTF-8. A session whose
backend read it otherwise could hide a statement inside what the analysis takes for a string
(with standard_conforming_strings off, 'a\\' does not end at its second quote). Whoever tries to
change those settings, and however (SET, set_config, a startup parameter, options, a function,
a role default), is refused or the session ends; nothing runs as something else."""

from __future__ import annotations

import psycopg
import pytest

from custos_e2e import WireClient, command_complete_tags, errors_in
from test_policy import STRICT
from test_prepared_names import cstr, exchange, login

# With standard_conforming_strings off PostgreSQL reads this as SELECT 'a'' || ' and then a DELETE;
# with it on, as one SELECT of two strings.
ATTACK = "SELECT 'a\\' || ' ; DELETE FROM events_log WHERE message = $$lexing-marker$$; --'"


@pytest.fixture
def strict(start_gateway):
    return start_gateway(STRICT)


@pytest.fixture
def marker_row(direct):
    def count() -> int:
        return direct().execute("SELECT count(*) FROM events_log WHERE message = 'lexing-marker'").fetchone()[0]

    direct().execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', 'lexing-marker')")
    before = count()
    yield
    assert count() == before, "the DELETE hidden in a string ran"
    direct().execute("DELETE FROM events_log WHERE message = 'lexing-marker'")


@pytest.mark.parametrize("setting", [
    "SET standard_conforming_strings = off",
    "SET SESSION standard_conforming_strings TO false",
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'LATIN1'",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
])
def test_changing_how_sql_is_read_is_refused_even_pipelined(strict, mint, marker_row, setting):
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        # Both sent before any answer: the second must not be read as the first would have made it.
        wire.send(b"Q", cstr(setting))
        wire.send(b"Q", cstr(ATTACK))
        first = wire.recv_until([b"Z"])
        second = wire.recv_until([b"Z"])
        assert [e["C"] for e in errors_in(first)] == ["0A000"], first
        assert not errors_in(second) and command_complete_tags(second) == ["SELECT 1"], second
        # The session goes on, with the settings as they were.
        shown = exchange(wire, (b"Q", cstr("SHOW standard_conforming_strings")))
        assert any(body.startswith(b"\x00\x01\x00\x00\x00\x02on") for t, body in shown if t == b"D"), shown


def test_safe_values_and_resets_are_allowed(strict, mint):
    with psycopg.connect(strict.dsn(mint(sub="agent-1", groups=["agents"])), autocommit=True) as conn:
        for statement in ("SET standard_conforming_strings = on", "SET client_encoding TO 'UTF8'",
                          "SET standard_conforming_strings TO DEFAULT", "SET NAMES DEFAULT"):
            conn.execute(statement)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)


@pytest.mark.parametrize("params", [
    {"standard_conforming_strings": "off"},
    {"client_encoding": "LATIN1"},
    {"options": "-c standard_conforming_strings=off"},
    {"options": "--client-encoding=SJIS"},
    {"options": "-c search_path=public -B 100"},
    {"role": "postgres"},
])
def test_startup_parameters_that_change_how_sql_is_read_are_refused(strict, mint, params):
    with WireClient(strict.port) as wire:
        messages = wire.login(mint(sub="agent-1", groups=["agents"]), extra=params)
    errors = errors_in(messages)
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "0A000")], messages


def test_startup_options_that_only_set_other_settings_pass(strict, mint):
    token = mint(sub="agent-1", groups=["agents"])
    with psycopg.connect(strict.dsn(token, options="-c search_path=public --statement-timeout=5s", client_encoding="UTF8"),
                         autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)


def test_a_function_that_changes_how_sql_is_read_ends_the_session(strict, mint, direct, marker_row):
    admin = direct()
    admin.execute("""
        CREATE OR REPLACE FUNCTION lexing_e2e_off() RETURNS text LANGUAGE sql
        AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$""")
    try:
        with WireClient(strict.port) as wire:
            login(wire, mint(sub="agent-1", groups=["agents"]))
            wire.send(b"Q", cstr("SELECT lexing_e2e_off()"))
            messages, eof = wire.recv_all()
        assert eof, messages
        assert [(e["S"], e["C"]) for e in errors_in(messages)][-1:] == [("FATAL", "0A000")], messages
    finally:
        admin.execute("DROP FUNCTION lexing_e2e_off()")
    with psycopg.connect(strict.dsn(mint(sub="agent-1", groups=["agents"])), autocommit=True) as conn:
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)


def test_a_role_default_that_reads_sql_otherwise_refuses_the_session(strict, mint, direct):
    # The role behind connection appdb_md5 sets its own default, as a role may.
    backend_role = direct(role="md5")
    backend_role.execute("ALTER ROLE custos_md5 SET standard_conforming_strings = off")
    try:
        with pytest.raises(psycopg.OperationalError) as failure:
            psycopg.connect(strict.dsn(mint(sub="agent-1", groups=["agents"]), dbname="appdb_md5"), autocommit=True)
        assert "standard_conforming_strings" in str(failure.value)
    finally:
        backend_role.execute("ALTER ROLE custos_md5 RESET standard_conforming_strings")


def test_text_that_is_not_utf8_is_an_error_and_the_session_goes_on(strict, mint):
    """Lossy decoding would read two different dollar-quote tags ($\\xff$, $\\xfe$) as one; a
    database that does not check its bytes (SQL_ASCII) would run them as written."""
    with WireClient(strict.port) as wire:
        login(wire, mint(sub="agent-1", groups=["agents"]))
        simple = exchange(wire, (b"Q", b"SELECT $\xff$x$\xfe$\0"))
        assert [(e["S"], e["C"]) for e in errors_in(simple)] == [("ERROR", "22021")], simple
        assert "Custos" in errors_in(simple)[0]["M"], simple
        extended = exchange(wire, (b"P", b"\0SELECT $\xff$x$\xfe$\0" + b"\0\0"), (b"B", b"\0\0\0\0\0\0\0\0"),
                            (b"E", b"\0\0\0\0\0"), (b"S", b""))
        assert [e["C"] for e in errors_in(extended)] == ["22021"], extended
        assert exchange(wire, (b"Q", cstr("SELECT 1")))[-1] == (b"Z", b"I")
