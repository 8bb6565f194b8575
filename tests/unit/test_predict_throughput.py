"""Smoke test of ``python -m benchmarks.predict_throughput`` (starts Ray: slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests._env import REPO, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_predict_throughput_tiny(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--chips", "120", "--size", "32", "--repeats", "1", "--work-dir", str(work), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.predict_throughput", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((out / "predict_throughput.json").read_text())
    (row,) = data["rows"]
    assert row["images"] >= 120 and row["score_img_s"] > 0 and row["predict_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["predict_img_s"] / row["score_img_s"])
    assert data["median_ratio"] == row["ratio"] and "benchmarks.predict_throughput" in data["command"]
