"""HAL's coarse allocation weighed by each cluster's weak/strong flip rate (``query.alloc_flips``)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import DataError
from hssal_ray.query import HierarchicalQuery
from hssal_ray.query.hierarchical import flip_rates
from hssal_ray.rounds import scores_strong_view

from ._data import GLOBAL_HAL, blob_pool


def test_flip_rates_known_answer_and_shrinkage() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    flips = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    rbar = 2 / 9  # the prior: one flip in 1 / rbar = 4.5 rows
    want = [3 / 8.5 / rbar, 1 / 8.5 / rbar, 1 / 5.5 / rbar]
    np.testing.assert_allclose(flip_rates(labels, flips, 4), [*want, 1.0])  # empty cluster 3: the prior
    rare = flip_rates(np.repeat([0, 1], 150), np.r_[True, np.zeros(299, bool)], 2)  # 1 flip in 300 rows
    assert 0.5 < rare[1] < 1.0 < rare[0] < 2.0  # one flip moves a cluster, it does not decide it
    assert flip_rates(labels, np.zeros(9, bool), 3).tolist() == [1.0, 1.0, 1.0]  # no flips: no weighing
    big = flip_rates(np.repeat([0, 1], 1000), np.r_[np.ones(500, bool), np.zeros(1500, bool)], 2)
    assert big[0] == pytest.approx(2.0, rel=1e-2) and big[1] == pytest.approx(0.0, abs=1e-2)


def _pool_with_flips(seed: int = 3):
    pool, blob = blob_pool(n=800, n_blobs=6, seed=seed, fp16=False)
    pool.scores["u_disagreement"] = np.zeros(len(pool), np.float32)
    return pool, blob


KW = GLOBAL_HAL


def _plain_and_smallest(pool) -> tuple[HierarchicalQuery, int]:
    """HAL without flips on ``pool``, and the coarse cluster with the smallest non-zero budget."""
    plain = HierarchicalQuery(**KW)
    plain.select(pool, 30)
    b0 = plain.info_["budget_per_cluster"]
    return plain, int(np.flatnonzero(b0 > 0)[np.argmin(b0[b0 > 0])])


def test_budget_moves_to_the_coarse_clusters_whose_views_disagree() -> None:
    pool, _ = _pool_with_flips()
    plain, target = _plain_and_smallest(pool)
    labels = plain.coarse_labels_
    pool.scores["u_disagreement"][labels == target] = 1.5  # every row of one cluster flips
    flips = HierarchicalQuery(alloc_flips=True, **KW)
    picks = flips.select(pool, 30)
    np.testing.assert_array_equal(flips.coarse_labels_, labels)  # same coarse level, only the weights move
    before = plain.info_["budget_per_cluster"][target]
    assert flips.info_["budget_per_cluster"][target] > before
    assert (labels[picks] == target).sum() == flips.info_["budget_per_cluster"][target]
    rate = flips.info_["cluster_flip_rate"]
    assert rate[target] == rate.max() and rate[target] > 1.0
    assert plain.info_["cluster_flip_rate"] is None


def test_uniform_flips_change_nothing_and_a_missing_column_is_a_clear_error() -> None:
    pool, _ = _pool_with_flips()
    kw = {"uncertainty": "margin", "coarse_k": 5, "alloc_over": "global", "random_state": 1}
    base = HierarchicalQuery(**kw).select(pool, 20)
    pool.scores["u_disagreement"][:] = 1.2  # every row flips: every cluster at the pool's rate
    np.testing.assert_array_equal(HierarchicalQuery(alloc_flips=True, **kw).select(pool, 20), base)
    del pool.scores["u_disagreement"]
    with pytest.raises(DataError, match="u_disagreement"):
        HierarchicalQuery(alloc_flips=True, **kw).select(pool, 20)


def test_the_strong_view_is_scored_only_when_hal_weighs_by_flips() -> None:
    assert scores_strong_view(load_config(None, ["query.alloc_flips=true"]))
    assert not scores_strong_view(load_config(None, ["query.alloc_flips=true", "query.strategy=margin"]))
    assert not scores_strong_view(load_config(None, []))


def test_mass_weighs_by_the_summed_disagreement_where_nothing_flips() -> None:
    pool, _ = _pool_with_flips(seed=5)
    plain, target = _plain_and_smallest(pool)
    labels, b0 = plain.coarse_labels_, plain.info_["budget_per_cluster"]
    pool.scores["u_disagreement"][:] = 0.05
    pool.scores["u_disagreement"][labels == target] = 0.5  # no flip anywhere: only the mass tells
    by_count = HierarchicalQuery(alloc_flips=True, **KW)
    by_count.select(pool, 30)
    np.testing.assert_array_equal(by_count.info_["budget_per_cluster"], b0)
    by_mass = HierarchicalQuery(alloc_flips="mass", **KW)
    by_mass.select(pool, 30)
    assert by_mass.info_["budget_per_cluster"][target] > b0[target]
    assert load_config(None, ["query.alloc_flips=mass"]).query.alloc_flips == "mass"
    with pytest.raises(Exception, match="alloc_flips"):
        HierarchicalQuery(alloc_flips="rate")._check_params()
