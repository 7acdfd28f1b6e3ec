#!/usr/bin/env python3
"""Load driver for scripts/load: many concurrent client sessions through one Custos gateway.

Phases, each bounded in time:
  1. the gateway's RSS before any session;
  2. one warm-up session (a statement, then closed), so a wrong token, policy or port fails fast;
  3. N sessions opened, at most --connect-concurrency at a time, each with its own freshly minted
     token (subject load-NNNN, group agents), and held open;
  4. with all N open and idle: the gateway's RSS, threads and descriptors, and PostgreSQL's
     connections (pg_stat_activity, asked directly, not through the gateway);
  5. every session runs statements (SELECT 1 and a keyed pgbench_accounts read, alternating) for
     --duration seconds, pausing --think-ms (±50 %) between them; every statement is timed (also
     per second of the run), and so are this driver's own event-loop stalls;
  6. all sessions closed; the gateway's RSS and PostgreSQL's connections again.
Prints a report, writes it as JSON (--json) and exits 1 when any session failed to connect, any
statement failed or timed out, or a session ended early. Run by scripts/load; not meant by hand.

The driver is one Python thread: its latencies include its own scheduling. Run against PostgreSQL
directly on a 2-core machine it reached about 2,600 statements/s at most, with p99 up to 100 ms or more in
the first second (all sessions starting at once); a statement timed across a reported event-loop
stall was slow on this side, not the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
import oidc_issuer  # noqa: E402

STATEMENTS = [
    ("SELECT 1", None),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = %s", "aid"),
]
ACCOUNTS = 100_000  # pgbench -i -s 1


def proc_status(pid: int) -> dict:
    """VmRSS/VmHWM in KiB, threads and open descriptors of a process."""
    out: dict = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
            elif key == "Threads":
                out["Threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its reaped children excluded)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and its live children (PostgreSQL: the postmaster and its backends),
    plus what it has collected from children that ended."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root:
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
        elif ppid == root:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


class Load:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.errors: list[str] = []  # every failure, with its session and phase
        self.latencies: list[float] = []  # seconds, one per successful statement
        self.by_second: dict[int, list[float]] = {}  # the run's latencies by the second they started in
        self.slowest: list[tuple[float, int, int, str, float]] = []  # (latency, session, n, sql, at)
        self.run_started = 0.0
        self.connect_times: list[float] = []
        self.by_kind = {sql: 0 for sql, _ in STATEMENTS}
        self.pg_super_pw = Path(args.pg_super_password_file).read_text().strip()

    # -- helpers -----------------------------------------------------------

    def error(self, what: str) -> None:
        self.errors.append(what)
        if len(self.errors) <= 20:
            print(f"load: error: {what}", file=sys.stderr, flush=True)

    def rss(self) -> dict:
        return proc_status(self.args.gateway_pid)

    def cpu(self) -> dict:
        """CPU seconds so far: the gateway, PostgreSQL (postmaster and backends), this driver."""
        return {"gateway": cpu_seconds(self.args.gateway_pid), "postgres": tree_cpu_seconds(self.args.pg_pid),
                "driver": time.process_time()}

    @staticmethod
    def cpu_share(before: dict, after: dict, wall: float) -> dict:
        """Cores used over a phase, per process group."""
        return {k: (after[k] - before[k]) / wall for k in before}

    def mint(self, sub: str) -> str:
        # ES256 (the issuer's ec-1 key): its RS256 path re-imports the RSA key for every token,
        # about 65 ms each here, which would make minting a thousand tokens take over a minute.
        return oidc_issuer.mint_token(self.args.issuer_state, sub=sub, groups=["agents"], aud="custos",
                                      ttl=self.args.token_ttl, alg="ES256")

    async def connect(self, token: str, name: str) -> psycopg.AsyncConnection:
        a = self.args
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=a.port, dbname=a.dbname, user="agent", password=token,
                sslmode="disable", connect_timeout=a.timeout, application_name=name, autocommit=True),
            timeout=a.timeout + 5)

    async def statement(self, conn: psycopg.AsyncConnection, i: int, k: int = -1) -> None:
        sql, param = STATEMENTS[i % len(STATEMENTS)]
        params = (random.randint(1, ACCOUNTS),) if param == "aid" else None
        started = time.perf_counter()

        async def run():
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        rows = await asyncio.wait_for(run(), timeout=self.args.timeout)
        took = time.perf_counter() - started
        self.latencies.append(took)
        self.by_second.setdefault(int(started - self.run_started), []).append(took)
        if len(self.slowest) < 5 or took > self.slowest[-1][0]:
            self.slowest.append((took, k, i, sql, started - self.run_started))
            self.slowest.sort(reverse=True)
            del self.slowest[5:]
        self.by_kind[sql] += 1
        if len(rows) != 1:
            raise RuntimeError(f"{sql!r} returned {len(rows)} rows, expected 1")

    async def pg_connections(self) -> dict:
        """PostgreSQL's client backends by user, asked directly as custos_super."""
        a = self.args
        conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=a.pg_port, dbname="postgres", user="custos_super",
            password=self.pg_super_pw, sslmode="disable", connect_timeout=a.timeout, autocommit=True),
            timeout=a.timeout + 5)
        try:
            cur = await asyncio.wait_for(conn.execute(
                "SELECT coalesce(usename, '?'), count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1"),
                timeout=a.timeout)
            return {user: n for user, n in await cur.fetchall()}
        finally:
            await conn.close()

    async def watch_loop(self, stalls: list[tuple[float, float]]) -> None:
        """Records (at, ms) whenever this driver's event loop wakes over 20 ms late from a 10 ms
        sleep: a statement timed across such a stall is slow on the client side, not the gateway's."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            late = time.perf_counter() - t - 0.01
            if late > 0.02:
                stalls.append((t - self.run_started, late * 1000))

    # -- phases ------------------------------------------------------------

    async def open_session(self, k: int, token: str, gate: asyncio.Semaphore):
        async with gate:
            started = time.perf_counter()
            try:
                conn = await self.connect(token, f"load-{k:04d}")
            except Exception as e:  # noqa: BLE001 (every failure is reported)
                self.error(f"session {k}: connect failed: {type(e).__name__}: {str(e).strip() or 'timed out'}")
                return None
            self.connect_times.append(time.perf_counter() - started)
            return conn

    async def work(self, k: int, conn: psycopg.AsyncConnection, start: asyncio.Event, end_at: float) -> int:
        think = self.args.think_ms / 1000
        await start.wait()
        if think > 0:
            await asyncio.sleep(random.uniform(0, think))  # spread the sessions over one pause
        i = k  # sessions start on different statements
        done = 0
        while time.monotonic() < end_at:
            try:
                await self.statement(conn, i, k)
            except Exception as e:  # noqa: BLE001
                self.error(f"session {k}: statement {done + 1} failed: {type(e).__name__}: {str(e).strip() or 'timed out'}")
                return done
            i += 1
            done += 1
            if think > 0:
                await asyncio.sleep(min(think * random.uniform(0.5, 1.5), max(0.0, end_at - time.monotonic())))
        return done

    async def main(self) -> dict:
        a = self.args
        report: dict = {"sessions_requested": a.sessions, "duration_s": a.duration, "think_ms": a.think_ms,
                        "connect_concurrency": a.connect_concurrency}
        report["gateway_before"] = self.rss()
        report["pg_before"] = await self.pg_connections()

        # Warm-up: one session, one statement. Fails fast on a wrong setup.
        try:
            conn = await self.connect(self.mint("load-warmup"), "load-warmup")
            await self.statement(conn, 0)
            await conn.close()
        except Exception as e:  # noqa: BLE001
            self.error(f"warm-up session failed: {type(e).__name__}: {e}")
            report["errors"] = self.errors
            return report
        self.latencies.clear()
        self.by_second.clear()
        self.slowest.clear()
        self.by_kind = {sql: 0 for sql, _ in STATEMENTS}
        await asyncio.sleep(1)
        report["gateway_warm"] = self.rss()

        t0 = time.perf_counter()
        tokens = [self.mint(f"load-{k:04d}") for k in range(a.sessions)]
        report["mint_s"] = time.perf_counter() - t0

        gate = asyncio.Semaphore(a.connect_concurrency)
        t0, cpu0 = time.perf_counter(), self.cpu()
        conns = await asyncio.gather(*(self.open_session(k, tokens[k], gate) for k in range(a.sessions)))
        report["open_s"] = time.perf_counter() - t0
        report["open_cpu_cores"] = self.cpu_share(cpu0, self.cpu(), report["open_s"])
        opened = [(k, c) for k, c in enumerate(conns) if c is not None]
        report["sessions_opened"] = len(opened)
        print(f"load: {len(opened)}/{a.sessions} sessions open after {report['open_s']:.1f} s", file=sys.stderr, flush=True)

        # All open and idle: let the gateway settle, then measure.
        await asyncio.sleep(a.settle)
        report["gateway_idle"] = self.rss()
        report["pg_idle"] = await self.pg_connections()
        broken = [k for k, c in opened if c.closed or c.broken]
        if broken:
            self.error(f"{len(broken)} sessions were closed while idle (first: {broken[:5]})")

        start = asyncio.Event()
        end_at = time.monotonic() + a.duration
        tasks = [asyncio.create_task(self.work(k, c, start, end_at)) for k, c in opened]
        t0 = self.run_started = time.perf_counter()
        cpu0 = self.cpu()
        stalls: list[tuple[float, float]] = []
        watcher = asyncio.create_task(self.watch_loop(stalls))
        start.set()
        done = await asyncio.gather(*tasks)
        watcher.cancel()
        report["driver_stalls"] = [{"at_s": at, "ms": ms} for at, ms in stalls]
        report["run_s"] = time.perf_counter() - t0
        report["run_cpu_cores"] = self.cpu_share(cpu0, self.cpu(), report["run_s"])
        report["gateway_after_run"] = self.rss()
        report["pg_after_run"] = await self.pg_connections()
        report["sessions_still_open"] = sum(1 for _, c in opened if not (c.closed or c.broken))
        if report["sessions_still_open"] != len(opened):
            self.error(f"{len(opened) - report['sessions_still_open']} sessions ended during the run")
        report["sessions_without_statements"] = sum(1 for n in done if n == 0)

        async def close(c):
            try:
                await asyncio.wait_for(c.close(), timeout=a.timeout)
            except Exception as e:  # noqa: BLE001
                self.error(f"close failed: {type(e).__name__}: {e}")
        await asyncio.gather(*(close(c) for _, c in opened))

        # The gateway closes its backend connections as the clients go: wait (bounded) for that.
        deadline = time.monotonic() + a.timeout
        while True:
            pg = await self.pg_connections()
            if pg.get("custos_scram", 0) <= report["pg_before"].get("custos_scram", 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        report["pg_after_close"] = pg
        if pg.get("custos_scram", 0) > report["pg_before"].get("custos_scram", 0):
            self.error(f"{pg.get('custos_scram')} backend connections still open {a.timeout} s after the clients closed")
        await asyncio.sleep(a.settle)
        report["gateway_after_close"] = self.rss()

        lat = sorted(self.latencies)
        ct = sorted(self.connect_times)
        report["statements"] = len(lat)
        report["statements_by_kind"] = self.by_kind
        report["latency_ms"] = {"p50": percentile(lat, 50) * 1000, "p99": percentile(lat, 99) * 1000,
                                "max": (lat[-1] if lat else float("nan")) * 1000,
                                "mean": (sum(lat) / len(lat) if lat else float("nan")) * 1000}
        report["connect_ms"] = {"p50": percentile(ct, 50) * 1000, "p99": percentile(ct, 99) * 1000,
                                "max": (ct[-1] if ct else float("nan")) * 1000}
        # Per second of the run: whether slow statements cluster (the start, periodic stalls) or spread.
        report["latency_by_second"] = [
            {"s": sec, "n": len(v), "p50_ms": percentile(sorted(v), 50) * 1000, "p99_ms": percentile(sorted(v), 99) * 1000,
             "max_ms": max(v) * 1000}
            for sec, v in sorted(self.by_second.items()) if sec < a.duration]
        report["slowest"] = [{"ms": t * 1000, "session": k, "statement": i, "sql": sql, "at_s": at}
                             for t, k, i, sql, at in self.slowest]
        report["errors"] = self.errors
        return report


def print_report(r: dict) -> None:
    def kib(x: int) -> str:
        return f"{x:,} KiB ({x / 1024:.1f} MiB)"

    def cores(c: dict) -> str:
        return "  ".join(f"{k} {v:.2f}" for k, v in c.items())

    def line(label: str, value: str) -> None:
        print(f"  {label:<40} {value}")

    def num(x: float) -> str:
        return f"{x:g}"

    n = r.get("sessions_opened", 0)
    before, warm = r["gateway_before"], r.get("gateway_warm")
    line("gateway RSS before any session", f"{kib(before['VmRSS'])}  threads {before['Threads']}  fds {before['fds']}")
    if warm:
        line("gateway RSS after 1 warm-up session", kib(warm["VmRSS"]))
    idle = r.get("gateway_idle")
    if idle:
        line(f"gateway RSS, {n} sessions idle", f"{kib(idle['VmRSS'])}  threads {idle['Threads']}  fds {idle['fds']}")
        if n:
            per = (idle["VmRSS"] - before["VmRSS"]) / n
            per_warm = (idle["VmRSS"] - warm["VmRSS"]) / n
            line("RSS per idle session", f"{per:.1f} KiB (from before any session; {per_warm:.1f} KiB from after warm-up)")
        line("PostgreSQL client backends idle", str(r["pg_idle"]))
    if "statements" in r:
        after = r["gateway_after_run"]
        lat, ct = r["latency_ms"], r["connect_ms"]
        line("sessions opened", f"{n}/{r['sessions_requested']} in {r['open_s']:.1f} s"
             f" ({r['connect_concurrency']} at a time; tokens minted in {r['mint_s']:.1f} s)")
        line("connect ms (token check + backend SCRAM)", f"p50 {ct['p50']:.1f}  p99 {ct['p99']:.1f}  max {ct['max']:.1f}")
        line("CPU cores used while opening", cores(r["open_cpu_cores"]))
        line("statements run", f"{r['statements']:,} in {r['run_s']:.1f} s"
             f" ({r['statements'] / r['run_s']:.0f}/s; think {num(r['think_ms'])} ms)  {r['statements_by_kind']}")
        line("statement latency ms", f"p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}  mean {lat['mean']:.2f}")
        line("CPU cores used while running", cores(r["run_cpu_cores"]))
        by_s = r.get("latency_by_second", [])
        if by_s:
            line("p99 ms by second of the run", " ".join(f"{x['p99_ms']:.0f}" for x in by_s))
            line("p50 ms by second of the run", " ".join(f"{x['p50_ms']:.0f}" for x in by_s))
        stalls = r.get("driver_stalls", [])
        worst = max(stalls, key=lambda x: x["ms"], default=None)
        line("driver event-loop stalls over 20 ms", f"{len(stalls)}" + (
            f", longest {worst['ms']:.0f} ms at {worst['at_s']:.1f} s, {sum(x['ms'] for x in stalls):.0f} ms in all" if worst else ""))
        line("slowest statements", ", ".join(f"{x['ms']:.0f} ms at {x['at_s']:.1f} s" for x in r["slowest"]))
        line("gateway RSS after the run", f"{kib(after['VmRSS'])} (peak {kib(after['VmHWM'])})  threads {after['Threads']}  fds {after['fds']}")
        line("sessions open at the end", f"{r['sessions_still_open']}  (sessions without a statement: {r['sessions_without_statements']})")
        line("PostgreSQL client backends", f"after run {r['pg_after_run']}  after close {r['pg_after_close']}")
        line("gateway RSS after all closed", f"{kib(r['gateway_after_close']['VmRSS'])}  fds {r['gateway_after_close']['fds']}")
    line("errors", str(len(r["errors"])))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the gateway's port")
    p.add_argument("--dbname", default="pgbench")
    p.add_argument("--gateway-pid", type=int, required=True)
    p.add_argument("--issuer-state", required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--pg-super-password-file", required=True)
    p.add_argument("--pg-pid", type=int, required=True, help="the postmaster, for CPU readings")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--think-ms", type=float, default=1000)
    p.add_argument("--connect-concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30, help="seconds for each connect, statement and close")
    p.add_argument("--settle", type=float, default=2, help="seconds to wait before a memory reading")
    p.add_argument("--token-ttl", type=int, default=3600)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()

    load = Load(args)
    try:
        report = asyncio.run(load.main())
    except Exception as e:  # noqa: BLE001
        print(f"load: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    failed = bool(report["errors"]) or report.get("sessions_opened", 0) != args.sessions
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
