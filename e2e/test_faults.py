"""Faults under the gateway, each on resources private to the test.

The backend: PostgreSQL restarted under an open session. The client gets a clean error (an
ErrorResponse with a SQLSTATE, then the connection closes), the gateway keeps running, the session's
end is recorded, new sessions work once PostgreSQL is back, and the chain verifies. The restarted
server is a private cluster (scripts/lib/common.sh pg_start in a temporary folder), so the suite's
shared PostgreSQL is never disturbed.

The store: its filesystem full, or gone read-only, for real (test_store_failure.py simulates the
failure with a trigger). Statements are refused with 58030 and never reach PostgreSQL, new sessions
are refused with 58030, the gateway keeps running; once the filesystem is usable again statements
run, every statement that ran has its statement event, the chain verifies and `custos verify`
passes. Each store gets a filesystem mounted for the test alone (root only: skipped where mounting is
not permitted), stopped gateways first, always unmounted (lazily if it must) at teardown.
- Full: an 8 MiB tmpfs, filled to the last byte by a filler file while a session is open, freed by
  deleting the filler; the same gateway and session go on.
- Read-only: `mount -o remount,ro` is refused (EBUSY) while a process holds files on the mount open
  for writing, as the gateway always does with its store, so the store sits on an ext4 image (loop
  device, errors=remount-ro) and the test raises a filesystem error through
  /sys/fs/ext4/DEV/trigger_fs_error: the kernel turns the filesystem read-only under the running
  gateway, as a failing disk does. It comes back only through umount, e2fsck and mount, so the
  gateway is stopped and another one started on the repaired store. The test syncs before raising
  the error: the store commits with synchronous=NORMAL (no fsync), and what was not yet written back
  is lost by the filesystem itself, as at a power loss.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from custos_e2e import ROOT, WireClient, errors_in, free_port, read_events, verify_chain, wait_until

COMMON_SH = ROOT / "scripts" / "lib" / "common.sh"


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory):
    rundir = tmp_path_factory.mktemp("faults-pg")
    port = free_port()
    env = {**os.environ, "CUSTOS_PG_SSL": "0"}
    subprocess.run(["bash", "-c", f'. "{COMMON_SH}" && pg_start "$0" "$1"', str(rundir), str(port)],
                   check=True, env=env, capture_output=True, text=True, timeout=180)
    values = dict(line.split("=", 1) for line in (rundir / "pg.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    yield {"port": port, "data": values["CUSTOS_PG_DATA"], "bindir": values["CUSTOS_PG_BINDIR"], "secrets": Path(values["CUSTOS_PG_SECRETS"]),
           "log": f"{values['CUSTOS_PG_BASE']}/postgres.log"}
    subprocess.run(["bash", "-c", f'. "{COMMON_SH}" && pg_stop "$0"', str(rundir)], env=env, capture_output=True, timeout=120)


def pg_ctl(pg: dict, *args: str) -> None:
    command = [f"{pg['bindir']}/pg_ctl", "-D", pg["data"], *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # The server's output goes to its log: a pipe would be held open by the restarted server.
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def test_backend_restart_mid_session(private_pg, start_gateway, mint, app):
    secrets = private_pg["secrets"]
    gw = start_gateway({"connections": {"restartable": {
        "host": "127.0.0.1", "port": private_pg["port"], "database": "appdb", "user": "custos_scram",
        "password_file": str(secrets / "scram.pw"), "sslmode": "disable", "allow_groups": ["agents"]}}})
    token = mint()
    conn = psycopg.connect(gw.dsn(token, dbname="restartable", app=app), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)

    pg_ctl(private_pg, "restart", "-m", "fast", "-w", "-l", private_pg["log"])

    # The open session gets a clean error, not a hang: PostgreSQL's FATAL (admin shutdown), or the
    # gateway's own error for a backend connection that went away.
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as failed:
        conn.execute("SELECT 2")
    assert time.monotonic() - started < 10
    assert failed.value.sqlstate in ("57P01", "08006", None), failed.value
    conn.close()
    assert gw.alive()

    # New sessions work once PostgreSQL is back.
    with psycopg.connect(gw.dsn(token, dbname="restartable", app=app + "-after"), autocommit=True) as again:
        assert again.execute("SELECT 3").fetchone() == (3,)

    session = gw.session_by_app(app)
    assert session["outcome"] in ("error", "closed"), session
    wait_until(lambda: gw.session_by_app(app + "-after")["outcome"] == "closed", 10, what="the second session's close")
    assert verify_chain(gw.store_path)["events"] > 0
    verify = gw.cli("verify", "--json", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# --------------------------------------------------------------------------
# faults at the store: its filesystem full, its filesystem gone read-only (see the module's notes)

MARKER_INSERT = "INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', '{}')"
STORE_FULL_TRIES = 300  # statements allowed to fit in space SQLite already holds before ENOSPC bites


def _run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class StoreMount:
    """A private filesystem for one gateway's store. The gateways started on it are stopped
    before it is unmounted (teardown), whatever the test did."""

    def __init__(self, base: Path, mountpoint: Path, launcher):
        self.base = base
        self.mountpoint = mountpoint
        self.launcher = launcher
        self.gateways: list = []
        self.image: Path | None = None

    @property
    def store(self) -> Path:
        return self.mountpoint / "custos.sqlite"

    def start_gateway(self):
        gw = self.launcher.start({"recording": {"store": str(self.store)}}, name="store-fault")
        self.gateways.append(gw)
        return gw

    def stop_gateways(self) -> None:
        for gw in self.gateways:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.proc.terminate()
                try:
                    gw.proc.wait(10)
                except subprocess.TimeoutExpired:
                    gw.proc.kill()
                    gw.proc.wait(5)

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint) and _run("umount", str(self.mountpoint)).returncode != 0:
            _run("umount", "-l", str(self.mountpoint))


def _need_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)} on this machine")


def _mount_or_skip(what: str, *command: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting {what} for the store needs root")
    _need_tools("mount", "umount")
    mounted = _run(*command)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {what} for the store here ({' '.join(command)}: {mounted.stderr.strip()})")


@pytest.fixture
def store_tmpfs(launcher):
    """An 8 MiB tmpfs of its own for the store."""
    base = Path(tempfile.mkdtemp(prefix="custos-e2e-tmpfs-"))
    mount = StoreMount(base, base / "store", launcher)
    mount.mountpoint.mkdir()
    try:
        _mount_or_skip("a tmpfs", "mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount.mountpoint))
        yield mount
    finally:
        mount.stop_gateways()
        mount.unmount()
        shutil.rmtree(base, ignore_errors=True)


def _ext4_error_trigger(mount: StoreMount) -> Path:
    device = _run("findmnt", "-no", "SOURCE", str(mount.mountpoint)).stdout.strip()
    return Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"


@pytest.fixture
def store_ext4(launcher):
    """A 64 MiB ext4 image of its own for the store, mounted errors=remount-ro on a loop device."""
    base = Path(tempfile.mkdtemp(prefix="custos-e2e-ext4-"))
    mount = StoreMount(base, base / "store", launcher)
    mount.mountpoint.mkdir()
    mount.image = base / "store.img"
    try:
        _need_tools("mkfs.ext4", "e2fsck", "losetup", "findmnt")
        with open(mount.image, "wb") as image:
            image.truncate(64 << 20)
        made = _run("mkfs.ext4", "-q", "-F", str(mount.image), timeout=120)
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        _mount_or_skip("an ext4 loop device", "mount", "-o", "loop,errors=remount-ro", str(mount.image), str(mount.mountpoint))
        if not _ext4_error_trigger(mount).exists():
            pytest.skip(f"this kernel has no {_ext4_error_trigger(mount)} to raise a filesystem error with")
        yield mount
    finally:
        mount.stop_gateways()
        mount.unmount()
        # mount -o loop detaches its device on umount; a lazy umount may leave it to us.
        for line in _run("losetup", "-j", str(mount.image)).stdout.splitlines():
            _run("losetup", "-d", line.split(":", 1)[0])
        shutil.rmtree(base, ignore_errors=True)


def _fill(path: Path) -> int:
    """Writes `path` until the filesystem has no byte left (ENOSPC at every size); returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\xa5" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def _insert(conn: psycopg.Connection, marker: str, sql: str = MARKER_INSERT) -> str | None:
    """Runs the marker's INSERT; None when it ran, else the SQLSTATE it was refused with."""
    try:
        conn.execute(sql.format(marker))
        return None
    except psycopg.Error as error:
        return error.sqlstate or f"no SQLSTATE: {error}"


def _markers_in_postgres(direct, prefix: str) -> set[str]:
    rows = direct().execute("SELECT message FROM events_log WHERE message LIKE %s", (prefix + "%",)).fetchall()
    return {message for (message,) in rows}


def _recorded_statements(store: Path, prefix: str) -> dict[str, dict]:
    """The statement events naming a marker of this test (by marker), and the results recorded for them."""
    events = read_events(store)
    results = {(e["writer_id"], e["session_id"], json.loads(e["payload"]).get("statement"))
               for e in events if e["kind"] == "result"}
    recorded: dict[str, dict] = {}
    for event in events:
        if event["kind"] != "statement" or prefix not in (event["payload"] or ""):
            continue
        payload = json.loads(event["payload"])
        marker = re.search(re.escape(prefix) + r"[\w-]*", payload["text"]).group(0)
        assert marker not in recorded, f"{marker} recorded twice"
        key = (event["writer_id"], event["session_id"], payload.get("statement"))
        recorded[marker] = {"event": event, "has_result": key in results}
    return recorded


def _session_refused(gw, token: str, app: str) -> dict[str, str]:
    """A new session's startup against a broken store: the ErrorResponse's fields."""
    with WireClient(gw.port) as client:
        errors = errors_in(client.login(token, app=app))
    assert errors, "a session was opened although the store cannot record it"
    return errors[0]


def _assert_refusals_held(gw, conn: psycopg.Connection, direct, prefix: str, refused: list[str]) -> None:
    """More statements of every protocol on the broken store: all refused with 58030, none run."""
    for n in range(3):
        marker = f"{prefix}refused-simple-{n}"
        assert _insert(conn, marker) == "58030", gw.log()[-3000:]
        refused.append(marker)
    marker = f"{prefix}refused-extended"
    with pytest.raises(psycopg.Error) as extended:
        conn.execute("INSERT INTO events_log (source, level, message) VALUES ('e2e', 'info', %s)", (marker,))
    assert extended.value.sqlstate == "58030" and "not run" in str(extended.value)
    refused.append(marker)
    with pytest.raises(psycopg.Error) as select:
        conn.execute("SELECT 1")
    assert select.value.sqlstate == "58030"
    assert gw.alive(), gw.log()[-3000:]
    assert not _markers_in_postgres(direct, prefix) & set(refused), "a refused statement reached PostgreSQL"


def _assert_all_that_ran_is_recorded(gw, store: Path, direct, prefix: str, ran: list[str], refused: list[str]) -> None:
    in_postgres = _markers_in_postgres(direct, prefix)
    assert in_postgres == set(ran), f"ran {sorted(in_postgres)}, expected {sorted(ran)}"
    assert not in_postgres & set(refused)
    assert verify_chain(store)["events"] > 0
    verify = gw.cli("verify", "--json", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    recorded = _recorded_statements(store, prefix)
    assert set(recorded) == in_postgres, (
        f"statements run without a statement event: {sorted(in_postgres - set(recorded))}; "
        f"recorded but not run: {sorted(set(recorded) - in_postgres)}")


def test_store_disk_full(store_tmpfs, mint, direct, app):
    """The store's disk fills under an open session: 58030, nothing runs; space back, all goes on."""
    gw = store_tmpfs.start_gateway()
    token = mint()
    prefix = f"full-{app}-"
    ran: list[str] = []
    refused: list[str] = []
    with psycopg.connect(gw.dsn(token, app=app), autocommit=True) as conn:
        assert _insert(conn, prefix + "before") is None
        ran.append(prefix + "before")

        filler = store_tmpfs.mountpoint / "filler"
        assert _fill(filler) > 0
        assert os.statvfs(store_tmpfs.mountpoint).f_bavail == 0

        # SQLite may fit a few commits in pages its files already hold; once ENOSPC bites, 58030.
        for n in range(STORE_FULL_TRIES):
            marker = f"{prefix}full-{n}"
            outcome = _insert(conn, marker)
            if outcome is None:
                ran.append(marker)
                continue
            assert outcome == "58030", f"{marker} refused with {outcome}, not 58030:\n{gw.log()[-3000:]}"
            refused.append(marker)
            break
        else:
            pytest.fail(f"{STORE_FULL_TRIES} statements recorded on a full filesystem")
        _assert_refusals_held(gw, conn, direct, prefix, refused)
        refusal = _session_refused(gw, token, app + "-new")
        assert refusal.get("C") == "58030", refusal

        # Space again: the same session goes on, and new sessions open.
        filler.unlink()
        assert _insert(conn, prefix + "after") is None, gw.log()[-3000:]
        ran.append(prefix + "after")
        assert conn.execute("SELECT 2").fetchone() == (2,)
    with psycopg.connect(gw.dsn(token, app=app + "-after"), autocommit=True) as again:
        assert _insert(again, prefix + "new-session") is None
        ran.append(prefix + "new-session")
    assert gw.alive()
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    _assert_all_that_ran_is_recorded(gw, store_tmpfs.store, direct, prefix, ran, refused)


def test_store_filesystem_read_only(store_ext4, mint, direct, app):
    """The store's filesystem turns read-only under an open session: 58030, nothing runs; repaired, all goes on."""
    gw = store_ext4.start_gateway()
    token = mint()
    prefix = f"ro-{app}-"
    ran: list[str] = []
    refused: list[str] = []
    with psycopg.connect(gw.dsn(token, app=app), autocommit=True) as conn:
        for n in range(3):
            assert _insert(conn, f"{prefix}before-{n}") is None
            ran.append(f"{prefix}before-{n}")

        os.sync()  # see the module's notes: what was written so far is on the disk
        _ext4_error_trigger(store_ext4).write_text("custos e2e: the store's disk fails\n")
        probe = store_ext4.mountpoint / "probe"
        with pytest.raises(OSError) as read_only:
            probe.write_text("x")
        assert read_only.value.errno == errno.EROFS

        marker = f"{prefix}read-only-0"
        outcome = _insert(conn, marker)
        assert outcome == "58030", f"{marker}: {outcome or 'ran'} on a read-only store:\n{gw.log()[-3000:]}"
        refused.append(marker)
        _assert_refusals_held(gw, conn, direct, prefix, refused)
        refusal = _session_refused(gw, token, app + "-new")
        assert refusal.get("C") == "58030", refusal

    # The filesystem comes back only through umount, e2fsck and mount: the gateway must let go.
    # It exits by itself within 10 s of SIGTERM (gw.stop raises otherwise), not by a signal; its exit
    # code is not pinned here (it cannot commit what is queued nor close the store).
    rc = gw.stop(timeout=10)
    assert rc >= 0, f"custos serve died of signal {-rc} on SIGTERM with its store read-only:\n{gw.log()[-3000:]}"
    store_ext4.unmount()
    assert not os.path.ismount(store_ext4.mountpoint)
    checked = _run("e2fsck", "-fy", str(store_ext4.image), timeout=120)
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr
    remounted = _run("mount", "-o", "loop,errors=remount-ro", str(store_ext4.image), str(store_ext4.mountpoint))
    assert remounted.returncode == 0, remounted.stderr

    gw = store_ext4.start_gateway()
    with psycopg.connect(gw.dsn(token, app=app + "-after"), autocommit=True) as again:
        assert _insert(again, prefix + "after") is None, gw.log()[-3000:]
        ran.append(prefix + "after")
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    _assert_all_that_ran_is_recorded(gw, store_ext4.store, direct, prefix, ran, refused)


def _store_failures(gw) -> int:
    return gw.log().count("event store write failed")


def test_store_disk_full_mid_statement_keeps_its_result(store_tmpfs, mint, direct, app):
    """The disk fills while a statement runs: it ran, so once space is back its result is recorded."""
    gw = store_tmpfs.start_gateway()
    prefix = f"mid-{app}-"
    marker = prefix + "sleeping"
    filler = store_tmpfs.mountpoint / "filler"
    with psycopg.connect(gw.dsn(mint(), app=app), autocommit=True) as conn:
        outcome: list = []
        sleeping = threading.Thread(target=lambda: outcome.append(_insert(
            conn, marker, "INSERT INTO events_log (source, level, message) SELECT 'e2e', 'info', '{}' FROM pg_sleep(2)")))
        sleeping.start()
        try:
            # Write-ahead: its statement event is committed before it runs; then the disk fills.
            wait_until(lambda: marker in _recorded_statements(store_tmpfs.store, prefix), 10, 0.02, what="the statement event")
            failures = _store_failures(gw)
            _fill(filler)
        finally:
            sleeping.join(30)
        assert outcome == [None], outcome
        # Its result is due now, on a full disk.
        wait_until(lambda: _store_failures(gw) > failures, 10, what="the result's commit to fail")
        filler.unlink()
        assert _insert(conn, prefix + "after") is None, gw.log()[-3000:]
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    recorded = _recorded_statements(store_tmpfs.store, prefix)
    assert set(recorded) == _markers_in_postgres(direct, prefix) == {marker, prefix + "after"}
    assert recorded[prefix + "after"]["has_result"]
    assert recorded[marker]["has_result"], (
        "the result of a statement that ran was lost: its commit failed on the full disk and it was not kept "
        f"for a later commit:\n{gw.log()[-3000:]}")


def test_store_disk_full_at_session_close_keeps_the_close(store_tmpfs, mint, app):
    """A session that ends while the disk is full is recorded as ended once space is back."""
    gw = store_tmpfs.start_gateway()
    token = mint()
    filler = store_tmpfs.mountpoint / "filler"
    with psycopg.connect(gw.dsn(token, app=app), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_until(lambda: any(e["kind"] == "result" for e in read_events(store_tmpfs.store)), 10, 0.02, what="the result event")
        failures = _store_failures(gw)
        _fill(filler)
    # The session has ended (Terminate sent); its close event is due now, on a full disk.
    wait_until(lambda: _store_failures(gw) > failures, 10, what="the close's commit to fail")
    filler.unlink()
    with psycopg.connect(gw.dsn(token, app=app + "-after"), autocommit=True) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)
    assert gw.stop(timeout=10) == 0, gw.log()[-3000:]
    assert gw.session_by_app(app + "-after")["outcome"] == "closed"
    first = gw.session_by_app(app, settled=False)
    assert first["outcome"] != "open", (
        f"a session that ended while the disk was full is still recorded as open: {first}\n{gw.log()[-3000:]}")
