"""HAL's budget per coarse cluster: Cluster-Margin's round robin (alloc_round_robin), alloc_temper."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import BudgetError, ConfigError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import HierarchicalQuery, compute_all
from hssal_ray.query.hierarchical import allocate_budget, round_robin_budget

from ._data import GLOBAL_HAL, blob_pool


def _one_at_a_time(counts: np.ndarray, budget: int) -> np.ndarray:
    """The round robin as written: one pick per cluster per turn, the fewest candidates first."""
    b = np.zeros_like(counts)
    order = np.lexsort((np.arange(len(counts)), counts))
    while b.sum() < budget:
        for k in order:
            if b.sum() < budget and b[k] < counts[k]:
                b[k] += 1
    return b


def test_round_robin_budget_known_answers() -> None:
    # equal shares while every cluster has room; a cluster that runs out passes its turns on
    assert round_robin_budget(np.array([10, 10, 10]), 9).tolist() == [3, 3, 3]
    assert round_robin_budget(np.array([1, 10, 10]), 9).tolist() == [1, 4, 4]
    # the remainder goes to the clusters with the fewest candidates (ties: lower index)
    assert round_robin_budget(np.array([9, 5, 7, 5]), 6).tolist() == [1, 2, 1, 2]
    assert round_robin_budget(np.array([0, 4, 0]), 4).tolist() == [0, 4, 0]
    assert round_robin_budget(np.array([3, 2]), 0).tolist() == [0, 0]
    with pytest.raises(BudgetError):
        round_robin_budget(np.array([3, 2]), 6)


def test_round_robin_budget_matches_one_pick_per_turn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        counts = rng.integers(0, 15, int(rng.integers(1, 12)))
        budget = int(rng.integers(0, counts.sum() + 1))
        got = round_robin_budget(counts, budget)
        np.testing.assert_array_equal(got, _one_at_a_time(counts, budget))
        assert got.sum() == budget and (got <= counts).all()


def test_hal_spreads_the_batch_over_the_coarse_clusters_holding_candidates() -> None:
    pool, _ = blob_pool(n=800, n_blobs=6, seed=3, fp16=False)
    plain = HierarchicalQuery(**GLOBAL_HAL)
    base = plain.select(pool, 30)
    rr = HierarchicalQuery(alloc_round_robin=True, **GLOBAL_HAL)
    picks = rr.select(pool, 30)
    np.testing.assert_array_equal(rr.coarse_labels_, plain.coarse_labels_)  # the same coarse level
    cap = np.bincount(plain.coarse_labels_[_candidates(pool, plain)], minlength=6)
    b = rr.info_["budget_per_cluster"]
    np.testing.assert_array_equal(b, round_robin_budget(cap, 30))
    assert b.max() - b[cap > b].min() <= 1  # equal shares wherever a cluster has room
    assert not np.array_equal(b, plain.info_["budget_per_cluster"])  # the mass allocation differs here
    np.testing.assert_array_equal(np.bincount(rr.coarse_labels_[picks], minlength=6), b)
    assert len(set(picks.tolist())) == 30 and len(set(base.tolist())) == 30


def _candidates(pool, hal: HierarchicalQuery) -> np.ndarray:
    """The flat variant's candidates, as ``alloc_over: global`` splits them (the r * B most uncertain)."""
    u = pool.uncertainty(hal.uncertainty)
    m = int(np.ceil(hal.candidate_ratio * 30))
    return np.lexsort((np.arange(len(u)), -u))[:m]


def test_round_robin_rejects_the_mass_weighings_and_is_not_the_flat_variant_s() -> None:
    pool, _ = blob_pool(n=300, seed=1)
    for weighing in ({"alloc_temper": 0.5}, {"alloc_flips": True}, {"alloc_purity": True}):
        with pytest.raises(ConfigError, match="alloc_round_robin"):
            HierarchicalQuery(alloc_round_robin=True, **weighing, **GLOBAL_HAL).select(pool, 10)
        with pytest.raises(ConfigError, match="alloc_round_robin"):
            key, value = next(iter(weighing.items()))
            load_config(None, ["query.alloc_round_robin=true", f"query.{key}={str(value).lower()}"])
    flat = load_config(None, ["query.strategy=hal_flat", "query.alloc_round_robin=true"])
    assert "query.alloc_round_robin" in unused_keys(flat)
    assert "query.alloc_round_robin" not in unused_keys(load_config(None, ["query.alloc_round_robin=true"]))


@pytest.mark.parametrize("t", [0.0, 0.5, 2.0, 4.0])
def test_alloc_temper_weighs_mass_and_size_and_sharpens_above_one(t: float) -> None:
    pool, blob = blob_pool(n=800, n_blobs=6, seed=3, fp16=False)
    # each blob its own confidence: the candidates' mean uncertainty differs by coarse cluster
    logits = np.random.default_rng(1).standard_normal((len(pool), 5)) * (0.5 + blob[:, None])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    pool.probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    pool.scores = compute_all(pool.probs, pool.embeddings)
    plain = HierarchicalQuery(**GLOBAL_HAL)
    plain.select(pool, 30)
    hal = HierarchicalQuery(**{**GLOBAL_HAL, "alloc_temper": t})
    hal.select(pool, 30)
    np.testing.assert_array_equal(hal.coarse_labels_, plain.coarse_labels_)
    u = pool.uncertainty("margin")
    cand = _candidates(pool, plain)
    lab = plain.coarse_labels_[cand]
    cap = np.bincount(lab, minlength=6)
    mass = np.bincount(lab, weights=u[cand].astype(np.float64), minlength=6)
    mean_u = np.divide(mass, cap, out=np.zeros(6), where=cap > 0)
    want = allocate_budget(np.where(cap > 0, mean_u**t * cap, 0.0), cap, 30)  # mass**t * size**(1-t)
    b = hal.info_["budget_per_cluster"]
    np.testing.assert_array_equal(b, want)
    b1 = plain.info_["budget_per_cluster"]
    top, low = np.argmax(np.where(cap > 0, mean_u, -1)), np.argmin(np.where(cap > 0, mean_u, 2))
    if t > 1:  # sharper: the cluster whose candidates are most uncertain gains, the least loses
        assert b[top] >= b1[top] and b[low] <= b1[low] and not np.array_equal(b, b1)


def test_alloc_temper_above_its_bound_is_rejected() -> None:
    with pytest.raises(ConfigError, match="alloc_temper"):
        load_config(None, ["query.alloc_temper=4.5"])
    with pytest.raises(ConfigError, match="alloc_temper"):
        HierarchicalQuery(alloc_temper=4.5)._check_params()
