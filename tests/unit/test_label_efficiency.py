"""``benchmarks.label_efficiency`` on generated data: every method runs its loop and the outputs hold.

The numbers are not checked (a few steps on tiny data measure nothing); what is checked is the
protocol: the label schedule, one cold start shared by all methods of a seed, labeled sets that
grow by the query and never repeat, full supervision on every training label, and the table/plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import label_efficiency as le
from hssal_ray.config import load_config
from hssal_ray.data.synthetic import make_synthetic_rs

REPO = Path(__file__).resolve().parents[2]


def _cfg(data_root: str, *overrides: str) -> Any:
    """The CPU UCM profile pointed at the generated data, with a tiny model at 16 px."""
    return load_config(
        str(REPO / "configs" / "ucm_cpu.yaml"),
        [f"data.root={data_root}", "ssl.model=hssal_small_cnn", "data.image_size=16", *overrides],
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_rs(
        str(tmp_path_factory.mktemp("rs") / "ds"), num_classes=3, per_class=25, size=24, seed=3
    )


def test_every_method_runs_the_schedule_and_writes_outputs(data_root: str, tmp_path: Path) -> None:
    argv = [
        "--data", data_root, "--seeds", "1", "--secondary-seeds", "1", "--fractions", "0.1", "0.2", "0.3",
        "--out", str(tmp_path), "--tag", "le", "--threads", "1",
        "ssl.model=hssal_small_cnn", "data.image_size=16", "ssl.steps_per_round=2", "ssl.batch_size=4",
        "ssl.uratio=2", "ssl.eval_batch_size=32", "query.budget=6",
    ]  # fmt: skip
    assert le.main(argv) == 0
    res = json.loads((tmp_path / "le.json").read_text())
    n_train = res["n_train"]
    assert n_train == 60 and res["schedule"] == [6, 12, 18]
    assert {r["method"] for r in res["runs"]} == set(le.METHODS)
    for r in res["runs"]:
        rows = r["rounds"]
        if r["method"] == "full_supervision":
            assert [x["num_labeled"] for x in rows] == [n_train]
        else:
            assert [x["num_labeled"] for x in rows] == res["schedule"]
        for x in rows:
            assert 0.0 <= x["test_accuracy"] <= 1.0
    s = res["summary"]
    assert s["full_supervision"]["pct_of_full_supervision"] == [pytest.approx(100.0)]
    assert len(s["hssal"]["accuracy_mean"]) == 3 and any("hssal >= ssl_random" in c for c in res["checks"])
    md = (tmp_path / "le.md").read_text()
    assert "| hssal | 1 |" in md and "python -m benchmarks.label_efficiency" in md
    assert (tmp_path / "le.png").read_bytes()[:4] == b"\x89PNG"


def test_queries_extend_the_labeled_set_without_repeats(data_root: str) -> None:
    cfg = _cfg(data_root, "ssl.eval_batch_size=32")
    data = le.load_images(cfg, data_root, val_fraction=0.0)
    ids, _, y = data["train"]
    trainer = le.Trainer(cfg, 3, "cpu", seed=0)
    labeled = np.arange(0, 60, 10)
    for strategy in ("hal", "badge", "typiclust", "random"):
        c = _cfg(data_root, f"query.strategy={strategy}")
        picked = le.query(c, trainer, data, labeled, 7, seed=0, rnd=1)
        assert len(picked) == 7 and len(set(picked.tolist())) == 7
        assert not set(picked.tolist()) & set(labeled.tolist())
        assert picked.max() < len(ids)


def test_validation_split_comes_from_the_training_split(data_root: str) -> None:
    cfg = _cfg(data_root)
    full = le.load_images(cfg, data_root, val_fraction=0.0)
    val = le.load_images(cfg, data_root, val_fraction=0.2)
    train_ids = set(full["train"][0].tolist())
    assert set(val["test"][0].tolist()) <= train_ids  # the test split is never touched
    assert not set(val["test"][0].tolist()) & set(val["train"][0].tolist())
    assert len(val["test"][0]) == 12 and np.bincount(val["test"][2]).tolist() == [4, 4, 4]


def test_random_queries_do_not_depend_on_the_model(data_root: str) -> None:
    """supervised + random and SSL + random label the same samples (same seed): a like-for-like pair."""
    cfg = _cfg(data_root, "query.strategy=random")
    data = le.load_images(cfg, data_root, val_fraction=0.0)
    labeled = np.arange(0, 60, 10)
    a = le.query(cfg, le.Trainer(cfg, 3, "cpu", seed=0), data, labeled, 7, seed=1, rnd=2)
    b = le.query(cfg, le.Trainer(cfg, 3, "cpu", seed=99), data, labeled, 7, seed=1, rnd=2)
    c = le.query(cfg, le.Trainer(cfg, 3, "cpu", seed=0), data, labeled, 7, seed=2, rnd=2)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
