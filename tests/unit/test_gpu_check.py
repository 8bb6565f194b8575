"""``benchmarks.gpu_check`` without a GPU: its code at toy sizes on CPU, so that the GPU script cannot rot.

The runs go through the real CLI in a subprocess (that process must never import Ray: the GPU
machine has none). The images are generated here; nothing reads ``../shared/data``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.gpu_check import (
    SECTIONS,
    AugSteps,
    Normalise,
    _windows,
    guarded,
    main,
    prepare,
    render_markdown,
)
from hssal_ray.data.transforms import augment_batch
from hssal_ray.errors import DataError
from tests._env import cli_env

REPO = Path(__file__).resolve().parents[2]


def _images(root: Path, classes: int = 3, per_class: int = 6, side: int = 36) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (side, side, 3)) + np.eye(3, dtype=np.int64)[c] * 150
            Image.fromarray(img.astype(np.uint8)).save(root / f"class{c}" / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _images(tmp_path_factory.mktemp("src"))
    dest = tmp_path_factory.mktemp("prepared") / "gpu_check_data"
    m = prepare(dest, src, size=36)
    assert m["images"] == 18 and m["classes"] == 3 and m["weights"]["tensors"] > 200
    assert sorted(p.name for p in (dest / "ucm" / "class0").iterdir())[0] == "img00.jpg"
    return dest


def _run(*args: str, timeout: float = 600) -> dict:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    res = json.loads((out / "gpu_check_toy.json").read_text())
    assert res["toy"] is True and res["measured_on_gpu"] is False
    assert res["ray_imported"] is False, "the GPU check imported Ray"
    assert set(res["sections"]) == set(SECTIONS)
    assert "TOY CPU RUN" in (out / "gpu_check_toy.md").read_text()
    return res


def test_kmeans_and_knn_sections_run_without_ray(prepared: Path, tmp_path: Path) -> None:
    """The fast CPU twin: torch k-means and HAL on tensor embeddings, float16 k-NN tiles re-scored."""
    res = _run("--data", str(prepared), "--out", str(tmp_path), "--sections", "kmeans,knn")
    secs = res["sections"]
    assert {n for n, s in secs.items() if s["status"] == "skipped"} == set(SECTIONS) - {"kmeans", "knn"}
    km = secs["kmeans"]
    assert km["status"] == "ok" and [r["status"] for r in km["rows"]] == ["ok", "ok"]
    for row in km["rows"]:
        assert row["device"]["fit_s"] > 0 and row["device"]["n_iter"] >= 1
        assert row["hal_picks"] == res["sizes"]["hal_budget"]
    assert "cpu" in km["rows"][0]  # the CPU backend on the same rows
    knn = secs["knn"]
    assert knn["status"] == "ok" and knn["recall_at_k"] >= 0.99
    assert knn["affinity_nnz"] >= res["sizes"]["knn_n"] * knn["settings"]["k"]
    shard = knn["shard_search"]  # the sharded path's search: the CPU twin gives the CPU's lists
    assert shard["same_index_share"] == 1.0 and shard["max_cos_diff"] <= 1e-6 and shard["search_s"] > 0
    assert res["environment"]["device"] == "cpu" and res["data"]["labeled"] == 3


@pytest.mark.slow
def test_every_section_runs_on_cpu(prepared: Path, tmp_path: Path) -> None:
    """Every section ok, the loaders in worker processes (as on the GPU machine)."""
    res = _run("--data", str(prepared), "--out", str(tmp_path), "--workers", "1")
    assert res["loader_check"].startswith("worker processes ok")
    secs = res["sections"]
    assert {n: s["status"] for n, s in secs.items()} == dict.fromkeys(SECTIONS, "ok")
    rows = secs["train_throughput"]["rows"]
    assert {(r["model"], r["case"]) for r in rows} == {
        (m, c) for m in ("efficientnet_lite0", "resnet50") for c in ("profile", "fp32")
    }
    assert all(r["status"] == "ok" and r["img_s"] > 0 and len(r["losses"]) == 3 for r in rows)
    assert secs["encode"]["dim"] == 1280 and secs["encode"]["images"] == 18
    assert 0.0 <= secs["frozen_head"]["test_accuracy"] <= 1.0
    ft = secs["finetune"]
    assert ft["steps_run"] == 4 and len(ft["loss_curve"]) == 4 and "finetune_minus_frozen_points" in ft
    assert secs["scoring"]["rows"] == res["data"]["pool"] and "u_badge" in secs["scoring"]["columns"]
    assert ft["settings"]["loader_workers"] == {"labeled": 1, "unlabeled": 1}


def test_training_batches_are_the_pipelines() -> None:
    """The benchmark's batches equal the decode task's ``augment_batch(images, aug_seed * 4 + i)``.

    Per view ``i`` its own seed, uint8 augmentation then normalisation on the device: the same
    pixels as the Ray pipeline's decode task feeds the trainer (seeds as ``make_schedule`` draws them).
    """
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 24, 24), dtype=np.uint8)
    rows = np.array([4, 0, 2, 2, 1, 3], dtype=np.int64)
    seeds = rng.integers(2**61, 2**62, size=6, dtype=np.int64)
    labels = np.arange(5, dtype=np.int64)
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    ds = AugSteps(images, rows, seeds, labels, ("weak", "strong"), batch=3)
    norm = Normalise(mean, std, torch.device("cpu"))
    assert len(ds) == 2
    for b in range(2):
        item = ds[b]
        sl = slice(3 * b, 3 * b + 3)
        np.testing.assert_array_equal(item["label"].numpy(), labels[rows[sl]])
        for i, kind in enumerate(("weak", "strong")):
            ref = augment_batch(images[rows[sl]], seeds[sl] * 4 + i, kind=kind, mean=mean, std=std)
            np.testing.assert_allclose(norm(item[f"x_{kind}"]).numpy(), ref, atol=1e-5)
    with pytest.raises(IndexError):
        ds[2]


def test_window_means_from_the_worker_loops_running_means() -> None:
    reports = [
        {"step": 2, "steps_run": 2, "loss": 3.0, "mask_rate": 0.5},  # steps 1-2: 4, 2
        {"step": 4, "steps_run": 4, "loss": 2.0, "mask_rate": 0.25},  # steps 3-4: 1, 1
        {"step": 4, "steps_run": 4, "loss": 2.0},  # the final report repeats the last step
    ]
    assert _windows(reports) == [
        {"steps": "1-2", "loss": 3.0, "mask_rate": 0.5},
        {"steps": "3-4", "loss": 1.0, "mask_rate": 0.0},
    ]


def test_failures_are_recorded_and_the_run_goes_on() -> None:
    def oom() -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def broken() -> dict:
        return {"x": 1 / 0}

    assert guarded(lambda: {"x": 1}) == {"status": "ok", "x": 1}
    got = guarded(oom)
    assert got["status"] == "oom" and "20.00 GiB" in got["error"]
    got = guarded(broken)
    assert got["status"] == "error" and got["error"].startswith("ZeroDivisionError")
    md = render_markdown(
        {
            "toy": False,
            "sections": {
                "kmeans": {"status": "oom", "error": "CUDA out of memory"},
                "knn": {"status": "skipped", "reason": "budget: 3 s left, needs >= 25 s"},
            },
        }
    )
    assert "**oom**: CUDA out of memory" in md and "**skipped**: budget: 3 s left" in md


def _main(*args: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(["--device", "cpu", *args])
    finally:
        torch.set_num_threads(threads)  # a toy run sets one thread for its process


def test_budget_skips_what_no_longer_fits(prepared: Path, tmp_path: Path) -> None:
    assert _main("--data", str(prepared), "--out", str(tmp_path), "--budget-s", "-1") == 0
    res = json.loads((tmp_path / "gpu_check_toy.json").read_text())
    secs = res["sections"].values()
    assert all(s["status"] == "skipped" and s["reason"].startswith("budget") for s in secs)


def test_a_rerun_keeps_the_earlier_runs_good_sections(prepared: Path, tmp_path: Path) -> None:
    """``--keep``: a rerun of the failed sections (the GPU time allows one) still writes one whole file."""
    earlier = {
        "toy": True,
        "started_utc": "2026-01-01T00:00:00Z",
        "sections": {
            "frozen_head": {"status": "ok", "test_accuracy": 0.75},
            "kmeans": {"status": "oom", "error": "CUDA out of memory"},
        },
    }
    prev = tmp_path / "earlier.json"
    prev.write_text(json.dumps(earlier))
    out = tmp_path / "out"
    args = ("--data", str(prepared), "--out", str(out), "--sections", "kmeans", "--budget-s", "-1")
    assert _main(*args, "--keep", str(prev)) == 0
    res = json.loads((out / "gpu_check_toy.json").read_text())
    secs = res["sections"]
    assert secs["frozen_head"] == {
        **earlier["sections"]["frozen_head"],
        "kept_from_run": "2026-01-01T00:00:00Z",
    }
    assert secs["kmeans"]["status"] == "skipped" and secs["kmeans"]["reason"].startswith("budget")
    assert secs["knn"]["reason"] == "not selected (--sections)" and res["kept"]["sections"] == ["frozen_head"]
    assert "kept from the run started 2026-01-01" in (out / "gpu_check_toy.md").read_text()
    prev.write_text(json.dumps({**earlier, "toy": False}))  # GPU results never mix with a toy run's
    assert _main(*args, "--keep", str(prev)) == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main("--data", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--prepare" in err and "\n" not in err
    with pytest.raises(DataError, match="no class folders"):
        prepare(tmp_path / "out", tmp_path)
    assert _main("--sections", "kmeans,gpu") == 2
    assert "unknown ['gpu']" in capsys.readouterr().err
