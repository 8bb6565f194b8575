"""``python -m hssal_ray.tune``: errors that must surface before any Ray runtime starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _tune(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "hssal_ray.tune", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_search_space_is_one_error_before_ray(tmp_path: Path) -> None:
    p = _tune(
        "--config",
        "configs/sweep_demo.yaml",
        f"loop.run_dir={tmp_path}",
        "tune.search_space={ssl.p_cutof: [0.9], query.budget: {uniform: [3]}}",
    )
    assert p.returncode == 2
    assert "did you mean 'p_cutoff'" in p.stderr and "lo < hi" in p.stderr
    assert "Started a local Ray instance" not in p.stderr + p.stdout
    assert not (tmp_path / "sweep_demo").exists()


def test_resume_without_a_sweep_and_print_config(tmp_path: Path) -> None:
    p = _tune("--config", "configs/sweep_demo.yaml", f"loop.run_dir={tmp_path}", "--resume")
    assert p.returncode == 2 and "no sweep to resume" in p.stderr
    p = _tune(
        "--config", "configs/sweep_demo.yaml", f"loop.run_dir={tmp_path}", "--smoke-test", "--print-config"
    )
    assert (
        p.returncode == 0 and "trial bundles: [{'CPU': 1.0}]" in p.stdout and "total_budget: 12" in p.stdout
    )
