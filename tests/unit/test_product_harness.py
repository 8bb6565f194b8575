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
