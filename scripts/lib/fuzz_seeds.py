#!/usr/bin/env python3
"""Writes the committed seed corpus for scripts/fuzz (fuzz/corpus/TARGET/*): well-formed
protocol messages, startup and authentication exchanges, SQL from the analyzer's test corpus,
and configuration files. Run again after changing it: python3 scripts/lib/fuzz_seeds.py"""

import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "corpus"


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack(">i", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def frontend() -> dict[str, bytes]:
    bind = cstr("p1") + cstr("s1") + struct.pack(">hh", 1, 0) + struct.pack(">h", 2) \
        + struct.pack(">i", 1) + b"1" + struct.pack(">i", -1) + struct.pack(">hh", 1, 1)
    return {
        "query": msg(b"Q", cstr("SELECT 1; SELECT 'a''b'")),
        "extended": msg(b"P", cstr("s1") + cstr("SELECT $1::int, $2") + struct.pack(">hii", 2, 23, 25))
        + msg(b"B", bind) + msg(b"D", b"P" + cstr("p1")) + msg(b"E", cstr("p1") + struct.pack(">i", 0))
        + msg(b"C", b"S" + cstr("s1")) + msg(b"H", b"") + msg(b"S", b""),
        "copy": msg(b"d", b"1\tone\n") + msg(b"c", b"") + msg(b"f", cstr("client gave up")),
        "password": msg(b"p", cstr("eyJhbGciOi.token.sig")),
        "function": msg(b"F", struct.pack(">ih", 1598, 1) + struct.pack(">hh", 0, 1) + struct.pack(">i", 2) + b"42" + struct.pack(">h", 0)),
        "terminate": msg(b"X", b""),
    }


def backend() -> dict[str, bytes]:
    row_desc = struct.pack(">h", 2) + cstr("id") + struct.pack(">ihihih", 16384, 1, 23, 4, -1, 0) \
        + cstr("email") + struct.pack(">ihihih", 16384, 2, 25, -1, -1, 1)
    data_row = struct.pack(">h", 2) + struct.pack(">i", 1) + b"7" + struct.pack(">i", -1)
    error = b"SERROR\0VERROR\0C23505\0Mduplicate key\0DKey (email)=(a@b.c) already exists.\0\0"
    return {
        "result": msg(b"1", b"") + msg(b"2", b"") + msg(b"T", row_desc) + msg(b"D", data_row) + msg(b"C", cstr("SELECT 1"))
        + msg(b"Z", b"I"),
        "error": msg(b"E", error) + msg(b"N", error.replace(b"ERROR", b"NOTICE")) + msg(b"Z", b"E"),
        "copy": msg(b"H", b"\0" + struct.pack(">hh", 1, 0)) + msg(b"d", b"1\tx\n") + msg(b"c", b"")
        + msg(b"G", b"\0" + struct.pack(">h", 0)) + msg(b"W", b"\0" + struct.pack(">h", 0)),
        "status": msg(b"S", cstr("server_version") + cstr("15.18")) + msg(b"K", struct.pack(">ii", 42, 7))
        + msg(b"A", struct.pack(">i", 9) + cstr("chan") + cstr("payload")) + msg(b"I", b"") + msg(b"n", b"")
        + msg(b"s", b"") + msg(b"t", struct.pack(">hII", 2, 23, 25)) + msg(b"3", b"")
        + msg(b"v", struct.pack(">ii", 0, 1) + cstr("_pq_.x")) + msg(b"V", struct.pack(">i", 2) + b"42"),
    }


def startup() -> dict[str, bytes]:
    params = cstr("user") + cstr("agent") + cstr("database") + cstr("appdb") + cstr("application_name") + cstr("psql") + b"\0"
    packet = struct.pack(">ii", 8 + len(params), 196608) + params
    sasl = msg(b"R", struct.pack(">i", 10) + cstr("SCRAM-SHA-256") + b"\0")
    first = b"r=rOprNGfwEbeRWgbNEkqOserver,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    return {
        "startup": packet,
        "ssl-then-startup": struct.pack(">ii", 8, 80877103) + packet,
        "cancel": struct.pack(">iiii", 16, 80877102, 42, 7),
        "gss": struct.pack(">ii", 8, 80877104),
        "scram": sasl + msg(b"R", struct.pack(">i", 11) + first) + msg(b"R", struct.pack(">i", 12) + b"v=AAAA") + msg(b"R", struct.pack(">i", 0)),
        "md5": msg(b"R", struct.pack(">i", 5) + b"\x01\x02\x03\x04") + msg(b"R", struct.pack(">i", 0)),
        "cleartext": msg(b"R", struct.pack(">i", 3)) + msg(b"R", struct.pack(">i", 0)),
    }


def sql() -> dict[str, bytes]:
    seeds = {}
    for path in sorted((ROOT / "Tests" / "CustosSQLTests").glob("Corpus*.swift")):
        text = path.read_text()
        for n, m in enumerate(re.finditer(r'"((?:SELECT|INSERT|UPDATE|DELETE|WITH|COPY|CREATE|ALTER|DROP|GRANT|SET|BEGIN|PREPARE|EXECUTE|DO|TRUNCATE|VACUUM|EXPLAIN)[^"\\]*)"', text)):
            seeds[f"{path.stem}-{n:03d}"] = m.group(1).encode()
    seeds["multi"] = b"BEGIN; UPDATE t SET a = 1 WHERE id = $1; COMMIT"
    seeds["copy-csv"] = b"COPY (SELECT email FROM customers) TO STDOUT WITH (FORMAT csv, DELIMITER ';')"
    seeds["dollar"] = b"DO $x$ BEGIN PERFORM 1; END $x$"
    return seeds


def config() -> dict[str, bytes]:
    example = (ROOT / "examples" / "custos.yaml").read_bytes()
    minimal = b"""listen: {host: 127.0.0.1, port: 6432}
identity: {issuers: [{issuer: http://127.0.0.1:9000, audience: custos}]}
connections: {appdb: {host: 127.0.0.1, port: 5432, user: gw, password_file: pw, allow_groups: [agents]}}
recording: {store: custos.sqlite, retention: 90d, checkpoint_every: 10}
"""
    return {"example": example, "minimal": minimal}


def main() -> None:
    for target, seeds in {"frontend": frontend(), "backend": backend(), "startup": startup(), "sql": sql(), "config": config()}.items():
        folder = OUT / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
