"""HAL's coverage pick (``pick: cover``, ProbCover's greedy max coverage inside HAL's candidates)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool
from hssal_ray.query.hal_steps import (
    ClusterTask,
    _select_in_cluster,
    coverage,
    greedy_cover,
    kth_neighbor_distance,
)

from ._data import blob_pool


def _labeled_pool(n: int, seed: int, n_labeled: int) -> Pool:
    pool, _ = blob_pool(n=n, seed=seed, fp16=False)
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[:n_labeled] = True
    return pool


def _recorder() -> tuple[list[ClusterTask], Callable]:
    """A ``map_fn`` that keeps the tasks HAL hands to its fine level."""
    seen: list[ClusterTask] = []

    def record(fn, tasks):
        tasks = list(tasks)
        seen.extend(tasks)
        return map(fn, tasks)

    return seen, record


def _line(xs: list[float]) -> np.ndarray:
    x = np.asarray(xs, dtype=np.float32)
    return np.stack([x, np.zeros_like(x)], 1)


def test_kth_neighbor_distance_leaves_the_row_itself_out() -> None:
    X = _line([0, 1, 3, 7])
    np.testing.assert_allclose(kth_neighbor_distance(X, 1), [1, 1, 2, 4])
    np.testing.assert_allclose(kth_neighbor_distance(X, 2, chunk_size=3), [3, 2, 3, 6])
    np.testing.assert_allclose(kth_neighbor_distance(X, 9), [7, 6, 4, 7])  # k clipped to R - 1
    assert kth_neighbor_distance(X[:1], 3).tolist() == [0.0]


def test_coverage_marks_the_balls_and_what_the_labels_cover() -> None:
    ref = _line([0, 1, 2, 5, 6, 10])
    cover, covered = coverage(_line([1, 5.5]), ref, _line([10.5]), radius=1.0)
    assert cover.tolist() == [
        [True, True, True, False, False, False],
        [False, False, False, True, True, False],
    ]
    assert covered.tolist() == [False] * 5 + [True]
    _, none = coverage(_line([1]), ref, None, radius=1.0)
    assert not none.any()


def test_greedy_cover_takes_the_largest_uncovered_ball_first_and_ties_go_to_the_more_uncertain() -> None:
    cover = np.array(
        [
            [1, 1, 0, 0, 0, 0],  # 0: two rows
            [0, 0, 1, 1, 1, 0],  # 1: three rows
            [0, 0, 0, 1, 1, 0],  # 2: inside 1's ball
            [1, 1, 0, 0, 0, 1],  # 3: three rows, two shared with 0
        ],
        dtype=bool,
    )
    covered = np.zeros(6, dtype=bool)
    # 1 and 3 tie at three rows: 1 is earlier (more uncertain); then 3 (three new) over 0 (two)
    assert greedy_cover(cover, covered, 2).tolist() == [1, 3]
    # nothing left to cover: the rest in priority order
    assert greedy_cover(cover, covered, 4).tolist() == [1, 3, 0, 2]
    covered[[2, 3, 4]] = True  # the labels cover 1's ball already
    assert greedy_cover(cover, covered, 1).tolist() == [3]
    with pytest.raises(ValueError, match="cannot pick"):
        greedy_cover(cover, covered, 5)


def test_a_cover_task_needs_its_balls() -> None:
    emb = _line([0, 1, 2, 3])
    task = ClusterTask(cluster=0, emb=emb, u=np.ones(4, np.float32), n_picks=2, pick="cover")
    with pytest.raises(ValueError, match="cover matrix"):
        _select_in_cluster(task)
    cover, covered = coverage(emb, emb, None, radius=1.0)
    task = ClusterTask(0, emb, np.ones(4, np.float32), 2, pick="cover", cover=cover, covered=covered)
    assert _select_in_cluster(task).tolist() == [1, 2]  # 1 covers 0-2, then 2 covers 3


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_cover_picks_spread_over_more_of_the_pool_than_the_most_uncertain(cls: type) -> None:
    pool = _labeled_pool(n=1200, seed=5, n_labeled=40)
    seen, record = _recorder()
    kw = dict(uncertainty="margin", candidate_ratio=10, coarse_k=4, alloc_over="global", random_state=0)
    picks = cls(pick="cover", map_fn=record, **kw).select(pool, 24)
    assert picks.size == 24 and np.unique(picks).size == 24 and not pool.exclude[picks].any()
    assert all(
        t.cover is not None and t.cover.shape[0] == t.emb.shape[0] for t in seen if t.n_picks < len(t.emb)
    )
    unc = cls(pick="uncertain", **kw).select(pool, 24)
    emb = np.asarray(pool.embeddings, dtype=np.float32)
    radius = float(np.median(kth_neighbor_distance(emb, 20)))

    def reach(rows: np.ndarray) -> int:  # pool rows within the radius of a pick or a label
        ball, lab = coverage(emb[rows], emb, emb[:40], radius)
        return int((ball.any(0) | lab).sum())

    assert reach(picks) > reach(unc)


def test_auto_with_early_pick_cover_covers_then_turns_uncertain() -> None:
    pool, _ = blob_pool(n=600, seed=2, fp16=False)
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[:5] = True  # 5 classes x typical_until 3 = 15 labels switch the rule
    q = HierarchicalQuery(pick="auto", early_pick="cover", typical_until=3, random_state=0)
    assert q.pick_rule(pool) == "cover"
    q.select(pool, 10)
    assert q.info_["pick"] == "cover"
    pool.exclude[:15] = True
    assert q.pick_rule(pool) == "uncertain"
    with pytest.raises(Exception, match="early_pick"):
        HierarchicalQuery(early_pick="uncertain")._check_params()


def test_greedy_cover_by_weight_takes_the_ball_with_the_most_uncertain_mass() -> None:
    cover = np.array([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)
    covered = np.zeros(4, dtype=bool)
    assert greedy_cover(cover, covered, 1).tolist() == [0]  # three rows over one
    w = np.array([0.1, 0.1, 0.1, 0.9])
    assert greedy_cover(cover, covered, 2, w).tolist() == [1, 0]  # 0.9 over 0.3
    with pytest.raises(ValueError, match="non-negative"):
        greedy_cover(cover, covered, 1, -w)


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_cover_by_uncertainty_weighs_each_ball_by_the_uncertainty_of_its_rows(cls: type) -> None:
    pool = _labeled_pool(n=900, seed=6, n_labeled=30)
    seen, record = _recorder()
    kw = dict(uncertainty="margin", pick="cover", candidate_ratio=10, coarse_k=3, alloc_over="global")
    by_u = cls(cover_by="uncertainty", map_fn=record, random_state=0, **kw).select(pool, 20)
    u = pool.uncertainty("margin")
    weighted = [t for t in seen if t.cover is not None]
    assert weighted and all(t.cover_weight is not None for t in weighted)
    for t in weighted:  # each reference row weighs its uncertainty: the weights are values of u
        assert np.isin(t.cover_weight.astype(np.float32), u.astype(np.float32)).all()
    seen.clear()
    by_rows = cls(map_fn=record, random_state=0, **kw).select(pool, 20)
    assert all(t.cover_weight is None for t in seen)
    assert set(by_u.tolist()) != set(by_rows.tolist())


def test_balls_of_a_large_coarse_cluster_cover_a_seeded_sample_of_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hssal_ray.query.hierarchical as hal_mod

    monkeypatch.setattr(hal_mod, "DENSITY_REFERENCE_ROWS", 100)
    pool = _labeled_pool(n=1200, seed=7, n_labeled=40)
    seen, record = _recorder()
    kw = dict(uncertainty="margin", pick="cover", candidate_ratio=10, coarse_k=3, alloc_over="global")
    a = HierarchicalQuery(map_fn=record, random_state=0, **kw).select(pool, 24)
    widths = {t.cover.shape[1] for t in seen if t.cover is not None}
    assert widths == {100}  # every coarse cluster holds more than 100 rows: a 100-row sample each
    assert all(t.covered.shape == (100,) for t in seen if t.cover is not None)
    b = HierarchicalQuery(random_state=0, **kw).select(pool, 24)
    np.testing.assert_array_equal(a, b)  # the sample is seeded
