"""Fixtures for the Ray-backed integration tests: real CLI runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    env.pop("RAY_ADDRESS", None)
    return env


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hssal_ray.loop ARGS`` and return the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "hssal_ray.loop", *args],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}")
    return proc


SMOKE = ["--smoke-test", "resources.num_cpus=2"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted smoke run (3 rounds = cold start + 2 queries), shared by several tests."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli(*SMOKE, f"loop.run_dir={runs}", "loop.name=ref")
    return runs / "ref"
