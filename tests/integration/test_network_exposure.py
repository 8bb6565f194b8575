"""What a loop's private Ray runtime exposes: nothing beyond loopback, and nothing without its token.

The runtime is the one ``ensure_ray`` starts for a loop (``hssal_ray._ray.init_private_ray``),
in a subprocess. While it runs:

* every TCP socket that its processes listen on (GCS, raylet, object manager, dashboard and its
  agents, the driver's and the workers' core workers) is bound to a loopback address;
* nothing accepts a TCP connection on the host's network address at any of those ports, so a
  client on the network (``ray.init(address="<host ip>:<gcs port>")`` with auth off, which ran
  code before) reaches nothing;
* a client on this machine that reaches the GCS on 127.0.0.1 is refused without the runtime's
  token: with token auth and a wrong token, with token auth and no token, and with auth off.
  None of them runs the task that would write a file;
* the same client with the right token does run it (so the refusals above are the token's);
* the loop's CLI joining it as a cluster with a wrong token stops with one line saying what to set;
* the token is not on any command line of the runtime's processes nor in its log files.

The slow test samples the sockets of a whole real CLI loop run (training, scoring, query) the
same way. Ray Train's multi-worker fits (``resources.num_workers`` >= 2) add one socket that is
not Ray's: torch's TCPStore for the gloo/NCCL rendezvous listens on every interface for the
duration of the fit (torch has no bind-address option); the smoke run uses one worker.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._procs import descendants, is_loopback, listening_sockets
from tests.integration.conftest import REPO, SMOKE, cli_env, start_loop

pytestmark = pytest.mark.ray

# what ensure_ray starts for a loop, reduced to: start, run one task, report, wait for stdin to close
_RUNTIME = """
import json, os, sys
from hssal_ray._ray import ensure_ray
from hssal_ray.config import ResourcesConfig
ensure_ray(ResourcesConfig(num_cpus=1, object_store_memory=100_000_000))
import ray
ray.get(ray.remote(lambda: 1).remote())
ctx = ray.get_runtime_context()
info = ray._private.worker._global_node.address_info
print(json.dumps({"gcs": ctx.gcs_address, "session_dir": info["session_dir"]}), flush=True)
sys.stdin.read()
"""

# a client: join the runtime at argv[1] and run a task that writes argv[2]
_CLIENT = """
import sys, ray
ray.init(address=sys.argv[1])
@ray.remote
def write(path):
    with open(path, "w") as f:
        f.write("ran")
    return True
print("ran a task:", ray.get(write.remote(sys.argv[2]), timeout=120), flush=True)
"""


def _host_address() -> str | None:
    """This machine's address on its network, as Ray finds it (``None`` without a network)."""
    from ray._common.network_utils import node_ip_address_from_perspective

    ip = node_ip_address_from_perspective(None)
    return None if is_loopback(ip) else ip


def _client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A client with no token but what ``extra`` gives it (an empty home: no ~/.ray/auth_token)."""
    env = {k: v for k, v in cli_env().items() if not k.startswith("RAY_AUTH")}
    home = tmp_path / f"home_{secrets.token_hex(4)}"
    home.mkdir()
    env.update(HOME=str(home), RAY_NUM_REDIS_GET_RETRIES="3", **extra)  # 3 connect tries, not 20
    return env


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A private runtime in a subprocess with a known token; its pid, GCS address and session dir."""
    token = secrets.token_hex(32)
    env = cli_env()
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN=token)  # "disabled" must not switch it off
    err = (tmp_path / "runtime.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNTIME],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("{"), (tmp_path / "runtime.err").read_text()[-3000:]
        yield {**json.loads(line), "pid": proc.pid, "token": token}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        err.close()


def test_private_runtime_listens_on_loopback_only_and_refuses_clients_without_its_token(
    runtime: dict[str, Any], tmp_path: Path
) -> None:
    pids = descendants(runtime["pid"])
    sockets = listening_sockets(pids)
    assert len(sockets) >= 5, sockets  # GCS, raylet, object manager, dashboard, agents, core workers
    exposed = sorted(s for s in sockets if not is_loopback(s[0]))
    assert not exposed, f"listening beyond loopback (address, port, pid): {exposed}"
    host = _host_address()
    if host is not None:  # from the network: no port answers (the GCS did, and ran a client's code)
        answered = []
        for _addr, port, _pid in sockets:
            try:
                socket.create_connection((host, port), timeout=5).close()
                answered.append(port)
            except OSError:
                pass
        assert not answered, f"ports that answer on {host}: {answered}"

    gcs_port = runtime["gcs"].rsplit(":", 1)[1]
    local = f"127.0.0.1:{gcs_port}"
    # a client on this machine that keeps 127.0.0.1 (else Ray turns it into the host's address)
    here = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "wrong token": (local, {**here, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}),
        "no token": (local, {**here, "RAY_AUTH_MODE": "token"}),
        "auth off": (local, {**here, "RAY_AUTH_MODE": "disabled"}),
        "right token": (local, {**here, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": runtime["token"]}),
    }
    procs = {}
    for name, (address, extra) in cases.items():
        marker = tmp_path / f"ran_{name.replace(' ', '_').replace(',', '')}"
        procs[name] = (
            subprocess.Popen(
                [sys.executable, "-c", _CLIENT, address, str(marker)],
                cwd=REPO,
                env=_client_env(tmp_path, **extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            marker,
        )
    # the loop joining it as a cluster (resources.address) with a wrong token: one line, exit 2
    loop = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hssal_ray.loop",
            *SMOKE,
            f"loop.run_dir={tmp_path}",
            f"resources.address={local}",
        ],
        cwd=REPO,
        env=_client_env(tmp_path, **here, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = {}
    for name, (p, marker) in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = (p.returncode, marker.exists(), out + err)
    for name, (rc, ran, text) in results.items():
        if name == "right token":
            assert rc == 0 and ran, f"{name}: {text[-3000:]}"
        else:
            assert rc != 0 and not ran, f"{name} ran a task: {text[-3000:]}"
    assert "InvalidAuthToken" in results["wrong token"][2], results["wrong token"][2][-3000:]
    assert "no authentication token was found" in results["no token"][2]
    assert "InvalidAuthToken" in results["auth off"][2], results["auth off"][2][-3000:]
    _, err = loop.communicate(timeout=300)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert loop.returncode == 2 and len(errors) == 1, err[-3000:]
    assert f"the Ray cluster at {local} refused this driver" in errors[0], errors
    assert "Traceback" not in err, err[-3000:]

    # the token is in no command line (visible to every user) and in no log of the runtime
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert runtime["token"].encode() not in cmdline, pid
    logs = Path(runtime["session_dir"]) / "logs"
    for f in logs.rglob("*"):
        if f.is_file():
            assert runtime["token"].encode() not in f.read_bytes(), f


@pytest.mark.slow  # a whole smoke run (2-3 min on 2 busy cores)
def test_every_socket_of_a_real_loop_run_is_on_loopback(tmp_path: Path) -> None:
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=net"]
    proc = start_loop(args, subprocess.DEVNULL, (tmp_path / "loop.err").open("w"))
    seen: dict[tuple[str, int], int] = {}
    try:
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            for addr, port, pid in listening_sockets(descendants(proc.pid)):
                seen.setdefault((addr, port), pid)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait()
    assert proc.returncode == 0, (tmp_path / "loop.err").read_text()[-4000:]
    assert len(seen) >= 5, seen
    assert not [s for s in seen if not is_loopback(s[0])], seen
