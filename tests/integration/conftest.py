"""Fixtures for the Ray-backed integration tests: real CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests._env import REPO, cli_env  # noqa: F401  (re-exported for the integration tests)
from tests._procs import descendants, terminal_sigint


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


def start_loop(
    args: list[str], stdout: Any, stderr: Any, env: dict[str, str] | None = None
) -> subprocess.Popen[Any]:
    """Start ``python -m hssal_ray.loop ARGS`` in its own process group (``env`` on top of :func:`cli_env`).

    SIGINT at its default, as from a terminal, also when this test session runs as a background job.
    """
    with terminal_sigint():
        return subprocess.Popen(
            [sys.executable, "-m", "hssal_ray.loop", *args],
            cwd=REPO,
            env={**cli_env(), **(env or {})},
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen[Any], timeout: float = 400) -> None:
    """Wait until ``cond()`` holds; fail if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the first driver exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stage_is(round_: int, stage: str) -> Callable[[dict[str, Any]], bool]:
    """A ``state.json`` predicate for :func:`interrupt_loop`: the run is in ``stage`` of round ``round_``."""
    return lambda st: st.get("round") == round_ and st.get("stage") == stage


def interrupt_loop(
    args: list[str],
    run: Path,
    log_path: Path,
    at: Callable[[dict[str, Any]], bool],
    what: str,
    wait_s: float,
    sig: int,
    to_group: bool,
    env: dict[str, str] | None = None,
) -> tuple[int, str, set[int]]:
    """Start the loop, wait until ``at(state)`` holds, then ``wait_s`` more, and send ``sig`` (to its group).

    Returns the driver's exit code, its stderr and the process tree it had when the signal went out.
    """
    log = log_path.open("w")
    first = start_loop(args, subprocess.DEVNULL, log, env)
    try:

        def reached() -> bool:
            try:
                st = json.loads((run / "state.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return bool(at(st))

        wait_for(reached, what, first, timeout=600)
        time.sleep(wait_s)
        tree = descendants(first.pid)
        if to_group:
            os.killpg(first.pid, sig)
        else:
            first.send_signal(sig)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()
    return first.returncode, log_path.read_text(), tree


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted smoke run (3 rounds = cold start + 2 queries), shared by several tests."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli(*SMOKE, f"loop.run_dir={runs}", "loop.name=ref")
    return runs / "ref"
