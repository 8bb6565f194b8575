"""SIGTERM of a driver that holds a run's lease and runs work on its private Ray runtime.

``ray.init`` replaces the driver's SIGTERM handling (a Python handler that kills the runtime's
processes under the driver, and the C-level failure-signal handler of Ray's core worker, which
prints a stack dump and aborts: exit 134). ``hssal_ray._ray`` puts the lease's handler back, so
SIGTERM unwinds: the lease is released, Ray shuts down at exit, the exit status is 143. The
whole CLI run (interrupted mid-training, then resumed) is the slow test in
``tests/integration/test_lease_runs.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hssal_ray.loop.lease import LEASE_FILE
from tests._procs import alive, descendants
from tests.integration.conftest import REPO, cli_env

pytestmark = pytest.mark.ray

_DRIVER = """
import sys, time
from hssal_ray._ray import ensure_ray
from hssal_ray.config import ResourcesConfig
from hssal_ray.loop.lease import RunLease
with RunLease(sys.argv[1]):
    ensure_ray(ResourcesConfig(num_cpus=1, object_store_memory=100_000_000))
    import ray
    @ray.remote
    def busy():
        time.sleep(300)
    ref = busy.remote()
    print("running", flush=True)
    ray.get(ref)
"""


def test_sigterm_during_ray_work_exits_143_releases_the_lease_without_a_dump(tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(run)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "running", p.communicate(timeout=60)[1][-3000:]
        assert (run / LEASE_FILE).exists()
        tree = descendants(p.pid)
        time.sleep(2)  # inside ray.get, which turns the handler's exception into SystemExit(1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    for dump in ("SIGTERM received", "Aborted", "Traceback", "Fatal Python error"):
        assert dump not in err, err[-3000:]
    assert not (run / LEASE_FILE).exists()
    assert sorted(f.name for f in run.iterdir()) == []
    deadline = time.monotonic() + 30  # ray.shutdown() at exit stopped them; the last ones may be exiting
    while (left := [pid for pid in tree if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the runtime still running: {left}"
