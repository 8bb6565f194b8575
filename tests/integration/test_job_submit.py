"""`ray job submit` to a local cluster started by cluster/local.sh, beside other Ray runtimes.

* CI: the demo is submitted to a `cluster/local.sh start` cluster while a private runtime (what
  a running loop holds, ``hssal_ray._ray.ensure_ray``) lives on the same machine. That runtime
  takes no well-known port, `status` lists exactly what `stop` stops, and `stop` stops the
  cluster (job driver included) but not the private runtime, which keeps answering. The cluster
  has token auth with a token of its own (``start`` prints the variables a client needs; a
  client without them is refused) and, with no worker nodes, listens on loopback only.
* slow: a whole loop runs to completion, with the labeled set of an uninterrupted run, while
  `local.sh start`, a `ray job submit` of another loop and `local.sh stop` happen beside it.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from hssal_ray._ray import WELL_KNOWN_PORTS
from tests._procs import descendants, is_loopback, listening_ports, listening_sockets
from tests.integration.conftest import REPO, SMOKE, cli_env, start_loop
from tests.integration.test_loop_cli import _labeled

pytestmark = pytest.mark.ray

LOCAL_SH = str(REPO / "cluster" / "local.sh")

# A loop's private runtime, reduced to what matters here: it pings its own runtime until told to stop.
_BYSTANDER = """
import json, os, sys, time
from hssal_ray._ray import ensure_ray
from hssal_ray.config import ResourcesConfig
from tests._procs import descendants, listening_ports
ensure_ray(ResourcesConfig(num_cpus=1, object_store_memory=100_000_000))
import ray
@ray.remote
def ping():
    return os.getpid()
ray.get(ping.remote())
print(json.dumps(sorted(listening_ports(descendants(os.getpid())))), flush=True)
pings = 0
while not os.path.exists(sys.argv[1]):
    ray.get(ping.remote(), timeout=60)
    pings += 1
    time.sleep(0.5)
print(f"pings {pings}", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_or_free(port: int) -> int:
    """``port`` if nothing on this machine holds it, else a free one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return _free_port()


def _readline(stream: IO[str], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def _cluster_env(tmp_path: Path, default_ports: bool = False) -> dict[str, str]:
    """The environment of a user who runs ``local.sh``: token auth on, no token of their own."""
    venv_bin = Path(sys.executable).parent
    pick = _port_or_free if default_ports else (lambda _p: _free_port())
    env = {k: v for k, v in cli_env().items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        HSSAL_VENV=str(venv_bin.parent),
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        RAY_PORT=str(pick(6379)),
        RAY_DASHBOARD_PORT=str(pick(8265)),
        RAY_CLIENT_SERVER_PORT=str(pick(10001)),
        HSSAL_RAY_TEMP_DIR=f"/tmp/hsr_{os.getpid()}_{tmp_path.name[-12:]}",  # short: socket paths
    )
    return env


def _local_sh(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", LOCAL_SH, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if args[0] == "stop":
        shutil.rmtree(env["HSSAL_RAY_TEMP_DIR"], ignore_errors=True)
    return proc


def _client_auth(start_stdout: str) -> dict[str, str]:
    """The ``RAY_AUTH_*`` variables of the submit command that ``local.sh start`` printed."""
    line = next(x for x in start_stdout.splitlines() if "ray job submit" in x)
    return dict(w.split("=", 1) for w in shlex.split(line.rstrip(" \\")) if w.startswith("RAY_AUTH_"))


def _submit(env: dict[str, str], run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`ray job submit` of a smoke loop (cold start + one training round) to the local cluster."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "hssal_ray.loop",
            "--config",
            "configs/demo.yaml",
            "--smoke-test",
            "loop.rounds=0",
            f"loop.run_dir={run_dir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _processes_naming(path: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    out.append(int(d))
        except (OSError, ValueError):
            continue
    return out


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, list[int]]]:
    """A private runtime started first; yields (process, stop file, its listening ports)."""
    stop = tmp_path / "stop_bystander"
    err = (tmp_path / "bystander.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _BYSTANDER, str(stop)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = _readline(proc.stdout, 300)
        assert line.startswith("["), (
            f"bystander did not start: {(tmp_path / 'bystander.err').read_text()[-3000:]}"
        )
        yield proc, stop, json.loads(line)
    finally:
        stop.touch()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        err.close()


def test_ray_job_submit_demo_beside_a_private_runtime(
    tmp_path: Path, bystander: tuple[subprocess.Popen[str], Path, list[int]]
) -> None:
    by, by_stop, by_ports = bystander
    # the private runtime (like a running loop's) holds none of Ray's well-known ports
    assert by_ports, "the private runtime listens on no TCP port?"
    assert not set(by_ports) & WELL_KNOWN_PORTS, by_ports
    env = _cluster_env(tmp_path)
    start = _local_sh(env, "start")
    try:
        assert start.returncode == 0, start.stderr
        assert "dashboard http://127.0.0.1:" in start.stdout
        assert "listening on 127.0.0.1 only; token auth: token" in start.stdout, start.stdout
        auth = _client_auth(start.stdout)
        token_file = Path(auth["RAY_AUTH_TOKEN_PATH"])
        assert auth["RAY_AUTH_MODE"] == "token" and token_file.stat().st_mode & 0o077 == 0, auth
        refused = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "list", "--address"]
            + [f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0, refused.stdout  # a client without the token
        env.update(auth)
        job = _submit(env, tmp_path, timeout=400)
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-6000:]
        assert "succeeded" in out
        state = json.loads((tmp_path / "demo" / "state.json").read_text())
        assert state["status"] == "done"
        assert (tmp_path / "demo" / "metrics.jsonl").read_text().strip()

        status = _local_sh(env, "status", timeout=60)
        assert status.returncode == 0, status.stderr
        assert "would stop these" in status.stdout, status.stdout
        listed = {
            int(x.split()[0])
            for x in status.stdout.splitlines()
            if x.startswith("  ") and x.split()[0].isdigit()
        }
        assert listed, status.stdout
        assert not listed & descendants(by.pid), "status lists processes of the private runtime"
        sockets = listening_sockets(set().union(*(descendants(pid) for pid in listed)))
        assert sockets and all(is_loopback(a) for a, _port, _pid in sockets), sockets
    finally:
        stop = _local_sh(env, "stop", timeout=120)
    assert stop.returncode == 0 and "stopped the cluster" in stop.stdout, stop.stdout + stop.stderr
    assert _processes_naming(env["HSSAL_RAY_TEMP_DIR"]) == []  # nothing of the cluster is left
    assert not token_file.exists()
    # the private runtime survived `local.sh stop` (the old `ray stop --force` killed it)
    time.sleep(3)
    assert by.poll() is None, "the private runtime died"
    by_stop.touch()
    assert by.wait(timeout=120) == 0
    assert by.stdout is not None and by.stdout.read().startswith("pings ")


@pytest.mark.slow  # 5-20 min on 2 shared cores: a 4-round loop, a cluster and a submitted loop beside it
@pytest.mark.timeout(3000)
def test_loop_runs_to_completion_beside_local_cluster_start_job_and_stop(
    reference_run: Path, tmp_path: Path
) -> None:
    """The loop starts first (its private runtime), then start, a job and stop happen beside it.

    Ray's default ports are used for the cluster when they are free, as a user's would be: the
    loop's runtime must not have taken them. The loop holds round 2's training until the stop is
    done (``HSSAL_FAULT_DELAY=train@2=until:FILE``; a smoke round takes seconds, the job minutes),
    so start, job and stop all happen while it runs.
    """
    args = [*SMOKE, "loop.rounds=4", f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"
    go = tmp_path / "stopped"
    log = (tmp_path / "loop.log").open("w")
    loop = start_loop(args, log, subprocess.STDOUT, {"HSSAL_FAULT_DELAY": f"train@2=until:{go}"})
    env = _cluster_env(tmp_path, default_ports=True)
    events: dict[str, Any] = {}

    def where() -> str | None:
        """The loop's round/stage now, or None once it has exited."""
        if loop.poll() is not None:
            return None
        st = json.loads((run / "state.json").read_text())
        return f"round {st['round']} {st['stage']}"

    try:
        deadline = time.time() + 400
        while (
            not (run / "state.json").exists()
            or json.loads((run / "state.json").read_text())["stage"] == "init"
        ):
            assert loop.poll() is None and time.time() < deadline, (tmp_path / "loop.log").read_text()[-4000:]
            time.sleep(0.5)
        events["loop_ports"] = sorted(listening_ports(descendants(loop.pid)))
        start = _local_sh(env, "start")
        assert start.returncode == 0, start.stderr
        env.update(_client_auth(start.stdout))
        events["started"] = where()
        job = _submit(env, tmp_path / "job")
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, (job.stdout + job.stderr)[
            -6000:
        ]
        events["submitted"] = where()
    finally:
        stop = _local_sh(env, "stop", timeout=120)
        events["stopped"] = where()
        go.touch()  # the loop goes on
    try:
        rc = loop.wait(timeout=1200)
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "loop.log").read_text()
    assert rc == 0, text[-6000:]
    assert stop.returncode == 0 and "stopped the cluster" in stop.stdout, stop.stdout + stop.stderr
    assert events["started"] and events["submitted"] and events["stopped"], (
        "the loop must run through start, job and stop",
        events,
    )
    assert not set(events["loop_ports"]) & WELL_KNOWN_PORTS, events["loop_ports"]
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    # the rounds it shares with the uninterrupted reference (2 query rounds) gave the same labels
    assert [x for x in _labeled(run) if x[2] <= 2] == _labeled(reference_run)
    assert json.loads((tmp_path / "job" / "demo" / "state.json").read_text())["status"] == "done"
    print(f"loop beside the cluster: {events}; cluster ports {env['RAY_PORT']}, {env['RAY_DASHBOARD_PORT']}")
