"""`ray job submit` of the demo to a local cluster started by cluster/local.sh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, cli_env

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_job_submit_demo(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = cli_env()
    env.update(
        HSSAL_VENV=str(venv_bin.parent),
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        RAY_PORT=str(_free_port()),
        RAY_DASHBOARD_PORT=str(_free_port()),
        RAY_DASHBOARD_AGENT_PORT=str(_free_port()),
    )
    local_sh = str(REPO / "cluster" / "local.sh")
    start = subprocess.run(
        ["bash", local_sh, "start"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    try:
        assert start.returncode == 0, start.stderr
        assert "dashboard http://127.0.0.1:" in start.stdout
        address = f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"
        job = subprocess.run(
            [
                str(venv_bin / "ray"),
                "job",
                "submit",
                "--address",
                address,
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
                f"loop.run_dir={tmp_path}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        out = job.stdout + job.stderr
        assert job.returncode == 0, out[-6000:]
        assert "succeeded" in out
        state = json.loads((tmp_path / "demo" / "state.json").read_text())
        assert state["status"] == "done"
        assert (tmp_path / "demo" / "metrics.jsonl").read_text().strip()
    finally:
        subprocess.run(["bash", local_sh, "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
        os.environ.pop("RAY_ADDRESS", None)
