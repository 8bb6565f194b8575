"""The benchmark harness's own helper (the rest of it only configures and runs the product)."""

from __future__ import annotations

import numpy as np

from benchmarks._product import stratified_subset


def test_stratified_subset_takes_the_fraction_of_the_split_over_every_class() -> None:
    y = np.repeat(np.arange(4), [10, 20, 30, 3])
    rows = stratified_subset(y, 0.1, seed=0)
    assert np.bincount(y[rows]).tolist() == [1, 2, 3, 1]  # floor(0.3) -> at least one
    # UCM's shape: 21 classes x 80 -> 8% is 134 images (6.4 a class: 6 each + 8 classes get a 7th)
    ucm = np.repeat(np.arange(21), 80)
    counts = [np.bincount(ucm[stratified_subset(ucm, 0.08, seed=s)]) for s in (0, 1)]
    for c in counts:
        assert c.sum() == 134 and set(c.tolist()) == {6, 7} and (c == 7).sum() == 8
    assert not np.array_equal(counts[0], counts[1])
    assert np.array_equal(rows, stratified_subset(y, 0.1, seed=0))
    assert not np.array_equal(rows, stratified_subset(y, 0.1, seed=1))


def test_validation_budgets_can_be_the_test_runs_counts(tmp_path) -> None:
    from benchmarks._product import base_config, budgets_as_in_test
    from tests.data.make_tiny import tiny_imagefolder

    root = tiny_imagefolder(str(tmp_path / "ds"), num_classes=3, per_class=50)  # 120 training rows
    over = [f"data.root={root}", "loop.initial_labeled=0.05", "query.budget=0.05", "loop.total_budget=0.2"]
    cfg = base_config("configs/ucm_cpu.yaml", over)
    counts = budgets_as_in_test(cfg)
    assert counts == ["loop.initial_labeled=6", "query.budget=6", "loop.total_budget=24"]
    carve = ["data.val_fraction=0.2", "data.eval_split=val"]
    val = base_config("configs/ucm_cpu.yaml", [*over, *counts, *carve])
    assert (val.loop.initial_labeled, val.query.budget, val.loop.total_budget) == (6, 6, 24)
    as_counts = base_config(
        "configs/ucm_cpu.yaml",
        [f"data.root={root}", "loop.initial_labeled=10", "query.budget=5", "loop.total_budget=20"],
    )
    assert budgets_as_in_test(as_counts) == []
