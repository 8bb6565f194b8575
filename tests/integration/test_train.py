"""Ray Train: 2 DDP workers learn generated data; a SIGKILLed worker resumes from the checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    from hssal_ray._ray import init_private_ray

    # 4 logical CPUs on 2 cores: 2 training workers + Ray Data tasks + the scoring actor.
    init_private_ray(num_cpus=4, include_dashboard=True, configure_logging=False)
    yield
    ray.shutdown()


def _setup(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from hssal_ray.config import load_config
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.synthetic import make_synthetic_rs

    root = make_synthetic_rs(str(tmp_path / "data"), num_classes=4, per_class=40, size=32, seed=3)
    cat = scan(root, test_fraction=0.25, seed=0)
    cfg = load_config(
        None,
        [
            f"loop.run_dir={tmp_path}",
            "loop.name=t",
            "data.image_size=32",
            "resources.num_workers=2",
            "ssl.batch_size=16",
            "ssl.uratio=1",
            "ssl.lr=0.05",
            "ssl.ema_m=0.9",
            *overrides,
        ],
    )
    t = cat.table
    train = t.filter(pc.equal(t.column("split"), "train"))
    test = t.filter(pc.equal(t.column("split"), "test"))
    return cfg, cat, train, test


def test_two_workers_learn_better_than_chance(ray_local: None, tmp_path: Path) -> None:
    from hssal_ray.scoring import evaluate_split
    from hssal_ray.ssl.trainer import fit_round

    cfg, cat, train, test = _setup(tmp_path, "ssl.steps_per_round=80")
    # every other sample of each class is labeled (the manifest is sorted by class)
    idx = np.arange(train.num_rows)
    labeled, pool = train.take(pa.array(idx[::2])), train.take(pa.array(idx[1::2]))
    res = fit_round(
        cfg,
        root=cat.root,
        kind=cat.kind,
        labeled=labeled,
        pool=pool,
        num_classes=4,
        round_idx=0,
        run_dir=cfg.run_path,
        init_dir=None,
    )
    assert res.metrics["world_size"] == 2
    assert res.metrics["step"] == 80
    ev = evaluate_split(
        cfg,
        test,
        root=cat.root,
        kind=cat.kind,
        ckpt_dir=res.checkpoint_dir,
        num_classes=4,
        run_dir=cfg.run_path,
    )
    assert ev["test_samples"] == test.num_rows
    assert ev["test_accuracy"] >= 0.6, ev  # chance is 0.25


def test_killed_worker_resumes_from_checkpoint(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hssal_ray.ssl.trainer import fit_round

    marker = tmp_path / "killed"
    monkeypatch.setenv("HSSAL_FAULT_KILL_WORKER", f"rank=1,step=25,marker={marker}")
    cfg, cat, train, _ = _setup(
        tmp_path, "ssl.steps_per_round=40", "ssl.checkpoint_every=10", "resources.max_failures=2"
    )
    idx = np.arange(train.num_rows)
    res = fit_round(
        cfg,
        root=cat.root,
        kind=cat.kind,
        labeled=train.take(pa.array(idx[::3])),
        pool=train,
        num_classes=4,
        round_idx=0,
        run_dir=cfg.run_path,
        init_dir=None,
    )
    assert marker.exists(), "the fault was never injected"
    # the restarted group continued from a checkpoint: the step count went on to 40 instead of
    # restarting from 0, and the last attempt ran only the remaining steps
    assert res.metrics["step"] == 40
    # (resumed from the step-20 checkpoint, or step 10 if 20 was not yet persisted when the
    # worker died: checkpoints upload while training goes on)
    assert res.metrics["steps_run"] in (20, 30), res.metrics
    meta = json.loads(Path(res.checkpoint_dir, "meta.json").read_text())
    assert meta["step"] == 40
    os.environ.pop("HSSAL_FAULT_KILL_WORKER", None)
