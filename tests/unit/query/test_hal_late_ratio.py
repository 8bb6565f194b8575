"""The candidate ratio of the rounds that pick late (query.late_candidate_ratio)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool

from ._data import GLOBAL_HAL, blob_pool, with_labeled

AUTO = {**GLOBAL_HAL, "pick": "auto", "typical_until": 2.0}


def _most_uncertain(pool: Pool, budget: int) -> set[int]:
    avail = pool.available()
    u = pool.uncertainty("margin")[avail]
    return {int(i) for i in avail[np.argsort(-u, kind="stable")[:budget]]}


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_late_ratio_one_is_margin_sampling(cls: type) -> None:
    pool, _ = blob_pool(n=900, n_classes=5, seed=3, fp16=False)
    late = with_labeled(pool, np.arange(20))  # 4 labels per class >= typical_until 2: the late rule
    strategy = cls(**AUTO, late_candidate_ratio=1)
    assert strategy.pick_rule(late) == "uncertain"
    picks = strategy.select(late, 15)
    assert set(picks.tolist()) == _most_uncertain(late, 15)  # r = 1: the B most uncertain, each picked
    wide = cls(**AUTO).select(late, 15)  # r = 10: diversity among the 150 most uncertain
    assert set(wide.tolist()) != _most_uncertain(late, 15)


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_early_rounds_keep_candidate_ratio(cls: type) -> None:
    pool, _ = blob_pool(n=900, n_classes=5, seed=4, fp16=False)
    early = with_labeled(pool, np.arange(5))  # 1 label per class: typical picks
    a = cls(**AUTO, late_candidate_ratio=1).select(early, 15)
    b = cls(**AUTO).select(early, 15)
    np.testing.assert_array_equal(a, b)


def test_only_auto_reads_it() -> None:
    pool, _ = blob_pool(n=600, n_classes=5, seed=5, fp16=False)
    late = with_labeled(pool, np.arange(20))
    fixed = {**GLOBAL_HAL, "pick": "uncertain"}
    a = HierarchicalQuery(**fixed, late_candidate_ratio=1).select(late, 12)
    np.testing.assert_array_equal(a, HierarchicalQuery(**fixed).select(late, 12))
    assert "query.late_candidate_ratio" in unused_keys(load_config(None, ["query.pick=uncertain"]))
    auto = load_config(None, ["query.pick=auto", "query.late_candidate_ratio=3"])
    assert "query.late_candidate_ratio" not in unused_keys(auto)
    flat = load_config(None, ["query.strategy=hal_flat", "query.pick=auto", "query.late_candidate_ratio=3"])
    assert "query.late_candidate_ratio" not in unused_keys(flat)  # the flat variant reads it too


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match="late_candidate_ratio"):
        load_config(None, ["query.late_candidate_ratio=0.5"])
    with pytest.raises(Exception, match="late_candidate_ratio"):
        HierarchicalQuery(late_candidate_ratio=-1)._check_params()
