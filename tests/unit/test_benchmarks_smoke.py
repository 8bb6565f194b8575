"""The benchmarks' ``--quick`` modes on tiny generated data, so that they cannot rot.

Each runs the real CLI in a subprocess (as a user would) and checks the result files it writes:
the stamp (command, device, date) and the fields downstream readers use. Numbers are not checked:
tiny runs on a shared machine measure nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._common import md_table
from benchmarks.train_throughput import main as train_throughput_main
from benchmarks.train_throughput import steady_rates
from hssal_ray.data.synthetic import make_synthetic_rs
from tests._env import cli_env

REPO = Path(__file__).resolve().parents[2]


_env = cli_env


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _stamp_ok(data: dict, module: str) -> None:
    assert module in data["command"] and "--quick" in data["command"]
    assert data["device"]["usable_cpus"] >= 1 and data["device"]["summary"]
    assert data["date"].endswith("+00:00")


def test_steady_rates_known_answer() -> None:
    """Two workers, 10 images/step; loop time 10 s at step 25, 15 s at 50, 20 s at 75 -> 50 img/s each."""

    def rec(t: float, step: int, elapsed: float) -> dict:
        m = {"steps_run": step, "images_per_s_per_worker": step * 10 / elapsed}
        return {"t": t, "metrics": [m, dict(m)]}

    out = steady_rates([rec(100.0, 25, 10.0), rec(105.5, 50, 15.0), rec(111.0, 75, 20.0)], images_per_step=10)
    assert out["window_steps"] == [25, 75]
    assert out["steady_per_worker_img_s"] == pytest.approx(50.0)
    assert out["steady_total_img_s"] == pytest.approx(100.0)
    assert out["driver_total_img_s"] == pytest.approx(2 * 25 * 10 / 5.5)  # window ends a report early
    assert steady_rates([rec(1.0, 25, 10.0)], 10)["window_steps"] is None


def test_md_table_formats_missing_cells() -> None:
    assert md_table([{"a": 1.23456, "b": None}], ["a", "b", "c"]).splitlines()[-1] == "| 1.23 | - | - |"


def test_train_throughput_torch_path_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU part's code path (plain-torch train_step: fp32, bf16, channels_last) runs on CPU, no Ray."""
    out = tmp_path / "out"
    argv = ["--no-ray", "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", *argv])  # the command the result records
    assert train_throughput_main(argv) == 0
    data = json.loads((out / "train_throughput_torch_cpu.json").read_text())
    _stamp_ok(data, "benchmarks.train_throughput")
    assert data["gpu_measured"] is False
    assert [r["config"] for r in data["rows"]] == [
        "fp32",
        "bf16",
        "bf16 + channels_last",
        "fp32 + channels_last",
    ]
    assert all(r["img_s"] > 0 for r in data["rows"])
    assert "not measured" in (out / "train_throughput_torch_cpu.md").read_text()


@pytest.mark.ray
@pytest.mark.slow  # starts Ray in a subprocess; the package's Ray Data ingest path (pipeline.stream)
# runs end to end in CI in tests/integration/test_streaming.py
def test_ingest_quick(tmp_path: Path) -> None:
    """Ray Data stream vs DataLoader on 48 generated images: both run, outputs identical, files written."""
    data_dir = make_synthetic_rs(str(tmp_path / "ds"), num_classes=3, per_class=16, size=32, fmt="png")
    out = tmp_path / "out"
    _run(
        "benchmarks.ingest",
        "--quick",
        "--data",
        data_dir,
        "--size",
        "32",
        "--batch",
        "16",
        "--out",
        str(out),
        timeout=240,
    )
    data = json.loads((out / "ingest.json").read_text())
    _stamp_ok(data, "benchmarks.ingest")
    assert {r["pipeline"] for r in data["rows"]} == {"torch DataLoader", "ray stream()"}
    assert all(r["images_per_pass"] == 48 for r in data["rows"])
    assert data["identical_outputs"] == {"weak+strong": True}
    assert data["ratio"] > 0 and data["ray_init_s"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_train_throughput_ray_quick(tmp_path: Path) -> None:
    """1 vs 2 Ray Train workers through the real fit_round on tiny generated data (minutes: slow)."""
    out = tmp_path / "out"
    _run("benchmarks.train_throughput", "--quick", "--out", str(out), timeout=600)
    data = json.loads((out / "train_throughput.json").read_text())
    _stamp_ok(data, "benchmarks.train_throughput")
    rows = {r["config"]: r for r in data["rows"]}
    assert set(rows) == {"1w x 1t", "2w x 1t"}
    for r in rows.values():
        assert r["reports"] >= 2 and r["steady_total_img_s"] > 0, r


def test_run_worker_steps_reports_every_step_of_the_product_loop() -> None:
    import torch

    from benchmarks._worker_steps import run_worker_steps
    from hssal_ray.config import load_config

    cfg = load_config(None, ["ssl.batch_size=4", "ssl.uratio=1", "data.image_size=16"])
    lab = [{"x_weak": torch.randn(4, 3, 16, 16), "label": torch.randint(0, 3, (4,))}]
    unl = [
        {
            "x_weak": torch.randn(4, 3, 16, 16),
            "x_strong": torch.randn(4, 3, 16, 16),
            "label": torch.zeros(4, dtype=torch.long),
        }
    ]
    seen: list[int] = []
    rows = run_worker_steps(cfg, 3, torch.device("cpu"), lab, unl, 3, on_step=seen.append)
    assert [r["step"] for r in rows] == [1, 2, 3] and seen == [1, 2, 3]
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in rows)
    sup = run_worker_steps(cfg, 3, torch.device("cpu"), lab, None, 2)  # no unlabeled batches: no SSL term
    assert [r["step"] for r in sup] == [1, 2]
