"""HAL's automatic K1 floored at the number of classes (query.coarse_min_classes)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import DataError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import HierarchicalQuery, Pool
from hssal_ray.query.hierarchical import auto_coarse_k

from ._data import GLOBAL_HAL, blob_pool

KW = {k: v for k, v in GLOBAL_HAL.items() if k != "coarse_k"}  # the automatic K1


def test_auto_coarse_k_known_answers() -> None:
    assert auto_coarse_k(1344, 27) == 9  # ceil(27 / 3)
    assert auto_coarse_k(1344, 27, n_classes=21) == 21  # UCM: the classes
    assert auto_coarse_k(1534, 31, n_classes=12) == 12  # SIRI-WHU: 12 > ceil(31 / 3) = 11
    assert auto_coarse_k(1534, 60, n_classes=12) == 20  # the budget's rule when it asks for more
    assert auto_coarse_k(10**6, 4000, n_classes=45) == 64  # the cap holds at archive scale
    assert auto_coarse_k(10**6, 30, n_classes=100) == 30  # never above the budget
    assert auto_coarse_k(5, 5, n_classes=21) == 5  # nor the pool


def test_hal_uses_the_class_floor_only_when_asked() -> None:
    pool, _ = blob_pool(n=800, n_blobs=12, n_classes=15, seed=8, fp16=False)
    plain = HierarchicalQuery(**KW)
    plain.select(pool, 24)
    assert plain.info_["coarse_k"] == 8
    floored = HierarchicalQuery(**KW, coarse_min_classes=True)
    picks = floored.select(pool, 24)
    assert floored.info_["coarse_k"] == 15 and np.unique(picks).size == 24
    assert int(floored.coarse_labels_.max()) == 14
    fixed = HierarchicalQuery(**{**KW, "coarse_k": 6}, coarse_min_classes=True)  # an explicit K1 wins
    fixed.select(pool, 24)
    assert fixed.info_["coarse_k"] == 6


def test_needs_probabilities() -> None:
    pool, _ = blob_pool(n=300, seed=9, fp16=False)
    bare = Pool(ids=pool.ids, embeddings=pool.embeddings, scores=pool.scores)
    with pytest.raises(DataError, match="coarse_min_classes needs"):
        HierarchicalQuery(**KW, coarse_min_classes=True).select(bare, 10)
    assert HierarchicalQuery(**KW).select(bare, 10).size == 10


def test_config() -> None:
    flat = load_config(None, ["query.strategy=hal_flat", "query.coarse_min_classes=true"])
    assert "query.coarse_min_classes" in unused_keys(flat)
    assert "query.coarse_min_classes" not in unused_keys(load_config(None, ["query.coarse_min_classes=true"]))
    with pytest.raises(Exception, match="coarse_min_classes"):
        HierarchicalQuery(coarse_min_classes="yes")._check_params()
