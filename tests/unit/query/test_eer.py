"""Expected error reduction on the k-NN graph (``pick: eer``): known answers, and HAL's use of it."""

from __future__ import annotations

import numpy as np
import pytest

import hssal_ray.query.hierarchical as hal_mod
from hssal_ray.errors import DataError
from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery
from hssal_ray.query.eer import context_rows, eer_gain

from ._data import blob_pool


def _dense_and_outlier(n_dense: int = 30, seed: int = 0) -> np.ndarray:
    """``n_dense`` rows around e0, then one outlier at e1 (orthogonal: no graph weight to the rest)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_dense + 1, 8), dtype=np.float32)
    x[:n_dense, 0] = 1.0
    x[:n_dense, 2:] = 0.05 * rng.standard_normal((n_dense, 6))
    x[n_dense, 1] = 1.0
    return x


def test_a_row_in_a_dense_region_of_doubt_beats_an_equally_unsure_outlier() -> None:
    x = _dense_and_outlier()
    p = np.full((len(x), 2), 0.5, dtype=np.float32)  # everybody equally unsure
    g = eer_gain(x, p, np.ones(len(x), bool), np.array([0, len(x) - 1]))
    # the outlier's label settles only itself: its own least-confidence, 1 - 0.5
    assert g[1] == pytest.approx(0.5, abs=1e-3)
    assert g[0] > 2.0 * g[1]  # the dense row's label settles its unsure neighbours too


def test_nothing_to_gain_where_everything_is_sure() -> None:
    x = _dense_and_outlier()
    p = np.zeros((len(x), 3), dtype=np.float32)
    p[:, 1] = 1.0
    g = eer_gain(x, p, np.ones(len(x), bool), np.arange(5))
    np.testing.assert_allclose(g, 0.0, atol=1e-6)


def test_labeled_rows_do_not_count_and_a_contrary_label_costs() -> None:
    x = _dense_and_outlier()
    n = len(x)
    p = np.full((n, 2), 0.5, dtype=np.float32)
    only_self = np.zeros(n, bool)
    only_self[0] = True  # the neighbours are labeled (pinned): only the row's own doubt is left
    assert eer_gain(x, p, only_self, np.array([0]))[0] == pytest.approx(0.5, abs=1e-3)
    # sure neighbours of class 0, an unsure candidate: a label 1 would unsettle them, so the gain
    # is below the candidate's own 0.5
    sure = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (n, 1))
    sure[0] = [0.5, 0.5]
    assert eer_gain(x, sure, np.ones(n, bool), np.array([0]))[0] < 0.5


def test_eer_gain_rejects_bad_input() -> None:
    x = _dense_and_outlier()
    p = np.full((len(x), 2), 0.5, dtype=np.float32)
    ok = np.ones(len(x), bool)
    with pytest.raises(ValueError, match="unique"):
        eer_gain(x, p, ok, np.array([1, 1]))
    with pytest.raises(ValueError, match="unique"):
        eer_gain(x, p, ok, np.array([len(x)]))
    with pytest.raises(ValueError, match="probability rows"):
        eer_gain(x, p[:-1], ok, np.array([0]))
    with pytest.raises(ValueError, match="alpha"):
        eer_gain(x, p, ok, np.array([0]), alpha=1.0)
    assert eer_gain(x, p, ok, np.zeros(0, np.int64)).shape == (0,)


def test_context_rows_keep_every_candidate_under_the_cap() -> None:
    rng = np.random.default_rng(0)
    rows = rng.permutation(1000)[:600]
    cand = rows[:40]
    ctx = context_rows(rows, cand, 100, rng)
    assert ctx.size == 100 and np.isin(cand, ctx).all() and np.isin(ctx, rows).all()
    assert (np.diff(ctx) > 0).all()
    np.testing.assert_array_equal(context_rows(rows, cand, 600, rng), np.sort(rows))


def _eer_pool(n: int = 500):
    pool, _ = blob_pool(n=n, n_blobs=6, seed=3, fp16=False)
    pool.exclude = np.zeros(n, dtype=bool)
    pool.exclude[:20] = True
    return pool


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_eer_picks_the_best_gain_of_each_fine_cluster(cls: type) -> None:
    pool = _eer_pool()
    q = cls(pick="eer", candidate_ratio=4, random_state=0)
    picks = q.select(pool, 12)
    assert picks.size == 12 == np.unique(picks).size and not pool.exclude[picks].any()
    np.testing.assert_array_equal(picks, cls(pick="eer", candidate_ratio=4, random_state=0).select(pool, 12))
    assert q.info_["pick"] == "eer"
    # the same candidates ranked by uncertainty give another batch: the gain is what chose
    by_u = cls(pick="uncertain", candidate_ratio=4, random_state=0).select(pool, 12)
    assert not np.array_equal(picks, by_u)


def test_hal_builds_one_graph_per_coarse_cluster_above_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _eer_pool()
    seen: list[int] = []
    real = hal_mod.eer_gain

    def spy(emb, probs, unlabeled, cand, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(len(emb))
        return real(emb, probs, unlabeled, cand, **kw)

    monkeypatch.setattr(hal_mod, "eer_gain", spy)
    HierarchicalQuery(pick="eer", candidate_ratio=4, coarse_k=4, random_state=0).select(pool, 12)
    assert seen == [len(pool)]  # the pool fits: one graph
    seen.clear()
    monkeypatch.setattr(hal_mod, "MAX_CONTEXT", 90)
    q = HierarchicalQuery(pick="eer", candidate_ratio=4, coarse_k=4, random_state=0)
    picks = q.select(pool, 12)
    assert len(seen) == 4 and max(seen) <= 90  # one capped graph per coarse cluster
    assert picks.size == 12 and not pool.exclude[picks].any()


def test_auto_turns_to_the_late_pick() -> None:
    pool = _eer_pool()
    pool.exclude[:] = False
    pool.exclude[:2] = True  # 5 classes x typical_until 3 = 15 labels switch the rule
    q = HierarchicalQuery(pick="auto", typical_until=3, late_pick="eer", random_state=0)
    assert q.pick_rule(pool) == "typical"
    pool.exclude[:15] = True
    assert q.pick_rule(pool) == "eer"
    assert HierarchicalQuery(pick="auto", typical_until=3).pick_rule(pool) == "uncertain"
    assert q.select(pool, 10).size == 10 and q.info_["pick"] == "eer" and "eer" in q.info_["seconds"]
    with pytest.raises(Exception, match="late_pick"):
        HierarchicalQuery(late_pick="typical")._check_params()


def test_eer_needs_probabilities() -> None:
    pool = _eer_pool()
    pool.probs = None
    with pytest.raises(DataError, match="probabilities"):
        HierarchicalQuery(pick="eer", uncertainty="badge", random_state=0).select(pool, 10)
