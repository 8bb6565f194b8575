"""The run-directory lease (``hssal_ray.loop.lease``), without Ray: rules, races, heartbeat, exits."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from hssal_ray.errors import LeaseError, LeaseHeldError, LeaseLostError
from hssal_ray.loop import lease as lease_mod
from hssal_ray.loop.lease import LEASE_FILE, LeaseOwner, RunLease, read_lease
from tests._env import REPO, cli_env


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def _write_owner(run_dir: Path, age_s: float = 0.0, **fields: object) -> LeaseOwner:
    """Write a lease file for a made-up owner (default: a live-looking one on another host)."""
    base = LeaseOwner.this_process(60.0, command="python -m hssal_ray.loop loop.name=other")
    d = {**base.__dict__, "owner_id": "someone-else", "host": "elsewhere", "pid": 4242, **fields}
    owner = LeaseOwner(**d)  # type: ignore[arg-type]
    run_dir.mkdir(parents=True, exist_ok=True)
    p = run_dir / LEASE_FILE
    p.write_bytes(owner.to_bytes())
    if age_s:
        t = time.time() - age_s
        os.utime(p, (t, t))
    return owner


def _lease_json(run_dir: Path) -> dict[str, object]:
    return json.loads((run_dir / LEASE_FILE).read_text())


# --------------------------------------------------------------------------- acquire / release


def test_acquire_writes_owner_and_release_removes_it(run_dir: Path) -> None:
    with RunLease(str(run_dir), timeout_s=30) as lease:
        d = _lease_json(run_dir)
        assert d["pid"] == os.getpid() and d["host"] == socket.gethostname()
        assert d["timeout_s"] == 30 and d["started"] <= time.time()
        assert "pytest" in str(d["command"]) or "python" in str(d["command"])
        assert lease.held
        lease.check()
        owner = read_lease(str(run_dir))
        assert owner is not None and owner.owner_id == lease.owner.owner_id  # type: ignore[union-attr]
    assert not (run_dir / LEASE_FILE).exists()
    assert sorted(os.listdir(run_dir)) == []  # no temp, probe or side files left behind


def test_release_on_exception(run_dir: Path) -> None:
    with pytest.raises(KeyboardInterrupt), RunLease(str(run_dir)):
        assert (run_dir / LEASE_FILE).exists()
        raise KeyboardInterrupt
    assert not (run_dir / LEASE_FILE).exists()


def test_second_driver_refused_at_once_naming_the_owner(run_dir: Path) -> None:
    with RunLease(str(run_dir), timeout_s=30):
        before = (run_dir / LEASE_FILE).read_bytes()
        t0 = time.monotonic()
        with pytest.raises(LeaseHeldError) as ei:
            RunLease(str(run_dir), timeout_s=30).acquire()
        assert time.monotonic() - t0 < 2.0
        msg = str(ei.value)
        assert "\n" not in msg
        assert f"pid {os.getpid()}" in msg and f"host {socket.gethostname()}" in msg
        assert "in use by another driver" in msg and "--force-unlock" in msg
        assert (run_dir / LEASE_FILE).read_bytes() == before  # untouched


def test_fresh_lease_on_another_host_is_refused(run_dir: Path) -> None:
    _write_owner(run_dir, age_s=5)
    with pytest.raises(LeaseHeldError, match=r"host elsewhere, pid 4242, .*last heartbeat [4-6] s ago"):
        RunLease(str(run_dir), timeout_s=60).acquire()


# --------------------------------------------------------------------------- takeover rules


def test_dead_pid_on_this_host_is_taken_over_with_warning(
    run_dir: Path, dead_pid: int, caplog: pytest.LogCaptureFixture
) -> None:
    _write_owner(run_dir, host=socket.gethostname(), pid=dead_pid)  # fresh heartbeat, but gone
    with caplog.at_level(logging.WARNING, logger="hssal_ray"), RunLease(str(run_dir)) as lease:
        assert _lease_json(run_dir)["owner_id"] == lease.owner.owner_id  # type: ignore[union-attr]
    assert f"its process {dead_pid} on this host is not running" in caplog.text
    assert "taking over the lease" in caplog.text


def test_reused_pid_is_taken_over(run_dir: Path, live_process: subprocess.Popen[bytes]) -> None:
    _write_owner(run_dir, host=socket.gethostname(), pid=live_process.pid, pid_start="1")
    if lease_mod._proc_stat(live_process.pid) is None:
        pytest.skip("no /proc: pid reuse cannot be told")
    with RunLease(str(run_dir)) as lease:
        assert lease.held


def test_live_pid_on_this_host_is_refused_until_its_heartbeat_times_out(
    run_dir: Path, live_process: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    st = lease_mod._proc_stat(live_process.pid)
    fields = dict(
        host=socket.gethostname(), pid=live_process.pid, pid_start=st[1] if st else "", timeout_s=10
    )
    _write_owner(run_dir, age_s=3, **fields)
    with pytest.raises(LeaseHeldError, match=f"pid {live_process.pid}"):
        RunLease(str(run_dir)).acquire()
    _write_owner(run_dir, age_s=25, **fields)  # e.g. a stopped (SIGSTOP) driver
    with caplog.at_level(logging.WARNING, logger="hssal_ray"), RunLease(str(run_dir)):
        pass
    assert "its last heartbeat was 25 s ago (timeout 10 s)" in caplog.text


def test_the_owners_own_timeout_decides(run_dir: Path) -> None:
    _write_owner(run_dir, age_s=100, timeout_s=600)  # promised a heartbeat within 600 s
    with pytest.raises(LeaseHeldError):
        RunLease(str(run_dir), timeout_s=30).acquire()
    _write_owner(run_dir, age_s=100, timeout_s=60)
    with RunLease(str(run_dir), timeout_s=600) as lease:
        assert lease.held


def test_other_container_with_same_host_name_is_judged_by_heartbeat(run_dir: Path, dead_pid: int) -> None:
    _write_owner(run_dir, host=socket.gethostname(), pid=dead_pid, pid_ns="pid:[1]")
    with pytest.raises(LeaseHeldError):  # its pids are not ours to check
        RunLease(str(run_dir)).acquire()


def test_force_unlock_takes_a_fresh_lease_with_warning(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_owner(run_dir)
    with caplog.at_level(logging.WARNING, logger="hssal_ray"), RunLease(str(run_dir), force=True) as lease:
        assert _lease_json(run_dir)["owner_id"] == lease.owner.owner_id  # type: ignore[union-attr]
    assert "host elsewhere, pid 4242" in caplog.text and "--force-unlock" in caplog.text


@pytest.mark.parametrize("content", [b"", b'{"host": "x"}', b"[1, 2]"])
def test_corrupt_lease(run_dir: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    run_dir.mkdir()
    p = run_dir / LEASE_FILE
    p.write_bytes(content)
    with pytest.raises(LeaseHeldError, match=r"unreadable lease file .*--force-unlock"):
        RunLease(str(run_dir), timeout_s=30).acquire()
    with RunLease(str(run_dir), timeout_s=30, force=True) as lease:
        assert lease.held
    p.write_bytes(content)
    t = time.time() - 120
    os.utime(p, (t, t))
    with caplog.at_level(logging.WARNING, logger="hssal_ray"), RunLease(str(run_dir), timeout_s=30) as lease:
        assert lease.held
    assert "unreadable and has not changed for 120 s" in caplog.text


# --------------------------------------------------------------------------- heartbeat and loss


def test_heartbeat_refreshes_the_lease(run_dir: Path) -> None:
    with RunLease(str(run_dir), timeout_s=5, heartbeat_s=0.05):
        p = run_dir / LEASE_FILE
        old = time.time() - 1000
        os.utime(p, (old, old))
        deadline = time.time() + 5
        while p.stat().st_mtime < old + 1 and time.time() < deadline:
            time.sleep(0.02)
        assert p.stat().st_mtime > time.time() - 5


def test_taken_over_lease_is_lost_and_left_to_the_new_owner(run_dir: Path) -> None:
    lease = RunLease(str(run_dir), timeout_s=5, heartbeat_s=0.05).acquire()
    try:
        _write_owner(run_dir)  # someone else took over (e.g. --force-unlock elsewhere)
        with pytest.raises(LeaseLostError, match="taken over by host elsewhere, pid 4242"):
            lease.check()
        assert not lease.held
        assert lease._thread is not None
        lease._thread.join(timeout=5)
        assert not lease._thread.is_alive()  # the heartbeat stopped: it no longer touches the file
    finally:
        lease.release()
    assert _lease_json(run_dir)["owner_id"] == "someone-else"  # not removed by the old owner


def test_heartbeat_notices_loss_on_its_own(run_dir: Path) -> None:
    lease = RunLease(str(run_dir), timeout_s=5, heartbeat_s=0.05).acquire()
    try:
        os.unlink(run_dir / LEASE_FILE)
        deadline = time.time() + 5
        while lease.held and time.time() < deadline:
            time.sleep(0.02)
        assert not lease.held
        with pytest.raises(LeaseLostError, match="removed by someone else"):
            lease.check()
    finally:
        lease.release()


# --------------------------------------------------------------------------- races


def _race(run_dir: Path, n: int) -> tuple[list[RunLease], list[BaseException]]:
    barrier = threading.Barrier(n)
    won: list[RunLease] = []
    errors: list[BaseException] = []

    def go() -> None:
        barrier.wait()
        try:
            won.append(RunLease(str(run_dir), timeout_s=30).acquire())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, errors


def test_concurrent_acquire_exactly_one_wins(run_dir: Path) -> None:
    for _ in range(15):
        won, errors = _race(run_dir, 6)
        assert len(won) == 1, errors
        assert all(isinstance(e, LeaseHeldError) for e in errors), errors
        assert _lease_json(run_dir)["owner_id"] == won[0].owner.owner_id  # type: ignore[union-attr]
        won[0].release()


def test_concurrent_takeover_of_a_stale_lease_exactly_one_wins(run_dir: Path, dead_pid: int) -> None:
    for _ in range(15):
        _write_owner(run_dir, host=socket.gethostname(), pid=dead_pid)
        won, errors = _race(run_dir, 6)
        assert len(won) == 1, errors
        assert all(isinstance(e, LeaseHeldError) for e in errors), errors
        assert _lease_json(run_dir)["owner_id"] == won[0].owner.owner_id  # type: ignore[union-attr]
        won[0].release()
        assert [f for f in os.listdir(run_dir) if f != LEASE_FILE] == []


def test_wait_for_a_held_lease(run_dir: Path) -> None:
    first = RunLease(str(run_dir), timeout_s=30).acquire()
    threading.Timer(0.3, first.release).start()
    t0 = time.monotonic()
    with RunLease(str(run_dir), timeout_s=30, wait_s=10, heartbeat_s=0.05) as second:
        assert second.held
    assert 0.25 < time.monotonic() - t0 < 5


def test_takeover_spares_a_lease_refreshed_after_it_was_judged(run_dir: Path) -> None:
    owner = _write_owner(run_dir, age_s=500)
    store = lease_mod._LocalStore(str(run_dir / LEASE_FILE))
    data, mtime = store.read()  # type: ignore[misc]
    os.utime(run_dir / LEASE_FILE)  # its heartbeat came back before the takeover
    assert store.take(data, mtime) is False
    assert read_lease(str(run_dir)) == owner
    assert store.take(b"other content", None) is False and read_lease(str(run_dir)) == owner
    assert store.take(data, None) is True and read_lease(str(run_dir)) is None
    assert os.listdir(run_dir) == []


def test_lock_left_by_a_crashed_driver_is_removed(run_dir: Path, dead_pid: int) -> None:
    _write_owner(run_dir, host=socket.gethostname(), pid=dead_pid)
    lock = run_dir / (LEASE_FILE + ".lock")
    lock.write_text("vm 1\n")
    t = time.time() - 100
    os.utime(lock, (t, t))
    with RunLease(str(run_dir)) as lease:
        assert lease.held
    assert not lock.exists()


def test_local_store_without_hard_links(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*a: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    with RunLease(str(run_dir)):
        with pytest.raises(LeaseHeldError):
            RunLease(str(run_dir)).acquire()
    assert not (run_dir / LEASE_FILE).exists()


@pytest.fixture
def full_disk(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``full_disk(call)`` makes ``os.write`` (or ``os.fsync``) of files in ``run_dir`` fail with ENOSPC."""
    real = {"write": os.write, "fsync": os.fsync}

    def fail(call: str) -> None:
        def wrapped(fd: int, *args: Any) -> Any:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run_dir)):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real[call](fd, *args)

        monkeypatch.setattr(os, call, wrapped)

    yield fail
    monkeypatch.undo()


@pytest.mark.parametrize("hard_links", [True, False])
@pytest.mark.parametrize("call", ["write", "fsync"])
def test_full_disk_while_acquiring_leaves_no_file_and_the_next_acquire_is_immediate(
    run_dir: Path, full_disk: Any, monkeypatch: pytest.MonkeyPatch, call: str, hard_links: bool
) -> None:
    if not hard_links:
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    run_dir.mkdir(parents=True)
    full_disk(call)
    with pytest.raises(LeaseError, match=f"could not write the lease file {run_dir / LEASE_FILE}: No space"):
        RunLease(str(run_dir)).acquire()
    assert os.listdir(run_dir) == []  # no lease.json.<id>.new, no empty lease.json
    monkeypatch.undo()  # space freed
    t0 = time.monotonic()
    with RunLease(str(run_dir)) as lease:
        assert lease.held
    assert time.monotonic() - t0 < 5
    assert os.listdir(run_dir) == []


def test_full_disk_while_releasing_still_releases(
    run_dir: Path, full_disk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = RunLease(str(run_dir)).acquire()
    full_disk("write")  # the lock file cannot hold its owner's name now
    lease.release()
    assert os.listdir(run_dir) == []  # no lease.json, no lease.json.lock
    monkeypatch.undo()
    t0 = time.monotonic()
    with RunLease(str(run_dir)) as again:
        assert again.held
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- object stores


def test_object_store_backend(tmp_path: Path, dead_pid: int, caplog: pytest.LogCaptureFixture) -> None:
    """The s3/gs code path, on a pyarrow file system (local here: same API as S3FileSystem)."""
    path = str(tmp_path / "bucket" / "run" / LEASE_FILE)

    def store() -> lease_mod._ObjectStore:
        return lease_mod._ObjectStore(pafs.LocalFileSystem(), path, settle_s=0.05)

    a = RunLease("s3://bucket/run", timeout_s=5, heartbeat_s=0.05, _store=store()).acquire()
    assert LeaseOwner.parse(Path(path).read_bytes()) == a.owner
    with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}"):
        RunLease("s3://bucket/run", _store=store()).acquire()
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert Path(path).stat().st_mtime > old + 50  # the heartbeat re-wrote it
    a.release()
    assert not Path(path).exists()

    Path(path).write_bytes(
        LeaseOwner(**{**LeaseOwner.this_process(60).__dict__, "pid": dead_pid}).to_bytes()  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger="hssal_ray"):
        b = RunLease("s3://bucket/run", heartbeat_s=0.05, _store=store()).acquire()
    assert "not running" in caplog.text
    Path(path).write_bytes(b"{}")  # overwritten by someone else
    with pytest.raises(LeaseLostError):
        b.check()
    b.release()
    assert Path(path).read_bytes() == b"{}"
    assert sorted(os.listdir(tmp_path / "bucket" / "run")) == [LEASE_FILE]  # no clock probes left


def test_object_store_racing_create_later_put_wins(tmp_path: Path) -> None:
    path = str(tmp_path / LEASE_FILE)
    s = lease_mod._ObjectStore(pafs.LocalFileSystem(), path, settle_s=0.3)
    threading.Timer(0.1, lambda: Path(path).write_bytes(b"theirs")).start()  # lands within our settle time
    assert s.create(b"ours") is False


def test_store_choice() -> None:
    assert isinstance(lease_mod._store_for("mock:///bucket/run/lease.json"), lease_mod._ObjectStore)
    assert isinstance(lease_mod._store_for("/tmp/x/lease.json"), lease_mod._LocalStore)
    assert isinstance(lease_mod._store_for("file:///tmp/x/lease.json"), lease_mod._LocalStore)


# --------------------------------------------------------------------------- exits of a real process

_HOLDER = textwrap.dedent(
    """
    import signal, sys, time
    from hssal_ray.loop.lease import RunLease
    # a driver started from a terminal; a background job (`cmd &`) inherits SIGINT ignored, and one
    # under nohup (a test run started that way) SIGHUP ignored, which the lease rightly leaves alone
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with RunLease(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_lease_released_when_the_driver_is_signalled(run_dir: Path, sig: int) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        assert (run_dir / LEASE_FILE).exists()
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        p.kill()
    assert rc != 0
    assert not (run_dir / LEASE_FILE).exists()


def test_sigkilled_driver_leaves_a_lease_the_next_one_takes_over(run_dir: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    p.kill()
    p.wait()
    assert read_lease(str(run_dir)).pid == p.pid  # type: ignore[union-attr]
    with RunLease(str(run_dir)) as lease:
        assert lease.held


def test_lease_module_does_not_import_ray() -> None:
    code = "import sys, hssal_ray.loop.lease; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_timeout_must_be_positive(run_dir: Path) -> None:
    with pytest.raises(ValueError):
        RunLease(str(run_dir), timeout_s=0)
    lease = RunLease(str(run_dir)).acquire()
    try:
        with pytest.raises(LeaseError, match="already held"):
            lease.acquire()
    finally:
        lease.release()
