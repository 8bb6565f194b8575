"""``cluster/local_procs.py``: which processes ``cluster/local.sh stop`` stops (no Ray started)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._env import REPO

_spec = importlib.util.spec_from_file_location("local_procs", REPO / "cluster" / "local_procs.py")
assert _spec is not None and _spec.loader is not None
lp = importlib.util.module_from_spec(_spec)
sys.modules["local_procs"] = lp
_spec.loader.exec_module(lp)

T = "/tmp/ray_hssal_u_6379"


def _table() -> list[object]:
    P = lp.Proc
    return [
        P(100, 1, 100, f"gcs_server --log_dir={T}/session_1/logs"),  # head session 100
        P(101, 1, 100, f"raylet --raylet_socket_name={T}/session_1/sockets/raylet"),
        P(102, 101, 100, "ray::DashboardAgent"),  # names nothing, but in the session
        P(103, 101, 103, "ray::IDLE"),  # a worker: own group and session id in this table's view
        P(104, 103, 104, "/bin/sh -c python -m hssal_ray.loop"),  # a job driver in a session of its own
        P(105, 104, 104, "python -m hssal_ray.loop"),
        P(200, 1, 200, f"raylet --temp_dir={T}"),  # worker node session 200
        P(300, 1, 300, "ray::IDLE"),  # a reused session id: names no temp dir
        P(400, 1, 400, f"tail -f {T}/session_latest/logs/raylet.out"),  # names it, not started by us
        P(500, 1, 500, "raylet --raylet_socket_name=/tmp/ray_hssal_u_63790/session_2/sockets/raylet"),
        P(600, 1, 600, "raylet --raylet_socket_name=/tmp/ray/session_3/sockets/raylet"),  # a private runtime
        P(601, 600, 601, "ray::TorchTrainer"),
    ]


def test_cluster_processes_are_its_sessions_and_their_children() -> None:
    got = lp.cluster_processes(_table(), T, {100, 200, 300, 500, 600}, me=999)
    assert [p.pid for p in got] == [100, 101, 102, 103, 104, 105, 200]


def test_only_verified_sessions_count() -> None:
    assert lp.cluster_processes(_table(), T, set(), me=999) == []
    assert [p.pid for p in lp.cluster_processes(_table(), T, {300, 400}, me=999)] == [400]
    assert lp.cluster_processes(_table(), T + "0", {100}, me=999) == []  # a prefix is not the dir


def test_session_list_stop_on_real_processes(tmp_path: Path) -> None:
    temp_dir = str(tmp_path / "ray_tmp")
    sessions = str(tmp_path / "ray_tmp" / "hssal_local.sessions")
    helper = [sys.executable, str(REPO / "cluster" / "local_procs.py")]
    opts = ["--temp-dir", temp_dir, "--sessions", sessions]
    # a "node" naming the temp dir, with a child that does not: both are the cluster's
    child = "import time; time.sleep(60)"
    node = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    )
    started = subprocess.Popen([*helper, "session", *opts, "--", sys.executable, "-c", node, temp_dir])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", temp_dir + "0"])
    try:
        deadline = time.time() + 20
        out = ""
        while time.time() < deadline:
            out = subprocess.run([*helper, "list", *opts], capture_output=True, text=True).stdout
            if "would stop these 2 processes" in out:
                break
            time.sleep(0.1)
        assert "would stop these 2 processes" in out, out
        assert str(started.pid) in out and str(bystander.pid) not in out
        assert Path(sessions).read_text().split() == [str(os.getsid(started.pid))]
        stop = subprocess.run([*helper, "stop", *opts, "--grace", "5"], capture_output=True, text=True)
        assert "2 processes" in stop.stdout, stop
        assert started.wait(timeout=10) != 0
        assert bystander.poll() is None  # untouched
        count = subprocess.run([*helper, "list", *opts, "--count"], capture_output=True, text=True)
        assert count.stdout.strip() == "0"
    finally:
        for p in (started, bystander):
            p.kill()
            p.wait()


def test_session_needs_a_command(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="needs a command"):
        lp.main(["session", "--temp-dir", str(tmp_path), "--sessions", str(tmp_path / "s"), "--"])
