"""Fixtures for the Ray-backed integration tests: real CLI runs in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._env import REPO, cli_env  # noqa: F401  (re-exported for the integration tests)


def run_python(*argv: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGV`` from the repository root and return the finished process."""
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python {' '.join(argv[:2])} failed ({proc.returncode}):\n"
            f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
        )
    return proc


def run_module(
    module: str, *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m MODULE ARGS`` from the repository root and return the finished process."""
    return run_python("-m", module, *args, timeout=timeout, check=check)


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hssal_ray.loop ARGS`` and return the finished process."""
    return run_module("hssal_ray.loop", *args, timeout=timeout, check=check)


SMOKE = ["--smoke-test", "resources.num_cpus=2"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted smoke run (3 rounds = cold start + 2 queries), shared by several tests."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli(*SMOKE, f"loop.run_dir={runs}", "loop.name=ref")
    return runs / "ref"
