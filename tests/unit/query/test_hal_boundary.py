"""HAL's boundary check: picks that duplicate a pick of another coarse cluster are replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool, compute_all
from hssal_ray.query.hal_steps import cross_cluster_duplicates

from ._data import blob_pool


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Two coarse clusters on a line: rows 0-9 (cluster 0) at x = 0..9, rows 10-19 (cluster 1) at x = row,
    except row 10 at 9.05 (a near-copy of row 9 across the boundary), row 11 at 10.9, row 13 at 12.8.
    """
    x = np.arange(20.0)
    x[[10, 11, 13]] = [9.05, 10.9, 12.8]
    emb = np.stack([x, np.zeros_like(x)], 1).astype(np.float32)
    coarse = np.array([0] * 10 + [1] * 10)
    return emb, coarse


def test_a_near_copy_across_the_boundary_is_replaced_by_its_clusters_next_candidate() -> None:
    emb, coarse = _grid()
    # picks in priority order: 9 (cluster 0), 10 (its near-copy, cluster 1), 1, 15, 19
    picks = np.array([9, 10, 1, 15, 19])
    cands = [np.array([9, 1, 5, 3, 0]), np.array([10, 11, 15, 19, 13])]
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    # radius: median distance of the non-picked candidates to their own cluster's nearest pick
    # (5 -> 1: 4, 3 -> 1: 2, 0 -> 1: 1; 11 -> 10: 1.85, 13 -> 15: 2.2) = 2
    assert info["radius"] == pytest.approx(2.0)
    assert info["n_dropped"] == 1 and info["n_replaced"] == 1
    # 11 is 1.9 from 9 (too close); 13 is the first candidate of cluster 1 >= 2 from every kept pick
    np.testing.assert_array_equal(out, [9, 1, 15, 19, 13])


def test_close_picks_of_one_coarse_cluster_are_left_alone() -> None:
    emb, _ = _grid()
    coarse = np.zeros(20, dtype=np.int64)
    coarse[16:] = 1
    picks = np.array([9, 10, 1, 17])  # 9 and 10 are twins, but both in cluster 0
    cands = [np.array([9, 10, 1, 5, 3]), np.array([17, 16, 19])]
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    np.testing.assert_array_equal(out, picks)
    assert info["n_dropped"] == 0


def test_a_dropped_pick_stays_when_no_candidate_is_farther_from_the_batch() -> None:
    emb, coarse = _grid()
    picks = np.array([9, 10, 1, 15])
    cands = [np.array([9, 1, 5, 3, 0]), np.array([10, 11, 15])]  # cluster 1's only other candidate: 11
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    # radius 1.85 (lower median of 4, 2, 1, 1.85); 11 is 1.9 from the batch: it replaces 10
    assert info["radius"] == pytest.approx(1.85, abs=1e-5)
    assert info["n_dropped"] == 1 and 11 in out and 10 not in out
    cands = [np.array([9, 1, 5, 3, 0]), np.array([10, 15])]  # no other candidate in cluster 1
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    assert info["n_dropped"] == 1 and info["n_replaced"] == 0
    assert sorted(out.tolist()) == sorted(picks.tolist())


def test_torch_embeddings_give_the_same_batch() -> None:
    emb, coarse = _grid()
    picks = np.array([9, 10, 1, 15, 19])
    cands = [np.array([9, 1, 5, 3, 0]), np.array([10, 11, 15, 19, 13])]
    a, _ = cross_cluster_duplicates(emb, picks, cands, coarse)
    b, _ = cross_cluster_duplicates(torch.from_numpy(emb), picks, cands, coarse, chunk_size=2)
    np.testing.assert_array_equal(a, b)


def test_hal_with_the_check_spreads_a_pool_of_near_copies_across_more_scenes() -> None:
    base, _ = blob_pool(n=400, d=16, n_blobs=6, seed=3, fp16=False)
    rng = np.random.default_rng(0)
    X = np.repeat(np.asarray(base.embeddings), 5, axis=0)
    X += 0.02 * rng.standard_normal(X.shape).astype(np.float32)  # 5 near-copies of every scene
    group = np.repeat(np.arange(400), 5)
    P = np.repeat(np.asarray(base.probs), 5, axis=0)
    pool = Pool(
        ids=np.array([f"c{i}" for i in range(2000)], dtype=object),
        embeddings=X,
        probs=P,
        scores=compute_all(P, X),
    )
    kw = dict(uncertainty="margin", candidate_ratio=10, alloc_over="global", coarse_k=12, random_state=0)
    plain = HierarchicalQuery(**kw).select(pool, 60)
    q = HierarchicalQuery(boundary_check=True, **kw)
    checked = q.select(pool, 60)
    assert checked.size == 60 and np.unique(checked).size == 60
    assert q.info_["boundary"]["n_dropped"] >= 1
    assert q.info_["seconds"]["boundary"] >= 0
    assert np.unique(group[checked]).size > np.unique(group[plain]).size


def test_the_replacement_follows_the_pick_rules_rank() -> None:
    emb, coarse = _grid()
    picks = np.array([9, 10, 1, 15, 19])
    cands = [np.array([9, 1, 5, 3, 0]), np.array([10, 11, 15, 19, 13, 12])]
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    assert info["radius"] == pytest.approx(2.0) and out[-1] == 13  # priority order: 13 before 12
    asked = []

    def backwards(i: int) -> np.ndarray:  # a rule that prefers the last candidates
        asked.append(i)
        return -np.arange(cands[i].size, dtype=np.float64)

    out, _ = cross_cluster_duplicates(emb, picks, cands, coarse, rank_of=backwards)
    assert out[-1] == 12 and asked == [1]  # asked only for the cluster that lost a pick


@pytest.mark.parametrize(
    ("cls", "setting"),
    [
        (HierarchicalQuery, "boundary_check"),
        (HierarchicalQuery, "copy_check"),
        (FlatHierarchicalQuery, "copy_check"),
    ],
)
@pytest.mark.parametrize(("typical_until", "checked"), [(1e9, False), (0.0, True)])
def test_late_checks_only_rounds_past_the_typical_regime(
    cls: type, setting: str, typical_until: float, checked: bool
) -> None:
    pool, _ = blob_pool(n=600, seed=1)
    kw = dict(
        uncertainty="margin",
        pick="auto",
        typical_until=typical_until,
        alloc_over="global",
        candidate_ratio=10,
        random_state=0,
    )
    q = cls(**{setting: "late"}, **kw)
    picks = q.select(pool, 40)
    assert q.info_["pick"] == ("uncertain" if checked else "typical")
    assert (q.info_["boundary"] is not None) is checked
    if not checked:  # a typical round is the run without the check, pick for pick
        np.testing.assert_array_equal(picks, cls(**kw).select(pool, 40))


def test_typical_scale_sets_the_neighbourhood_of_a_typical_picks_density() -> None:
    from hssal_ray.query.hal_steps import typicality

    pool, _ = blob_pool(n=2000, seed=2)
    seen: list = []

    def record(fn, tasks):  # a map_fn that keeps the tasks it runs
        tasks = list(tasks)
        seen.extend(tasks)
        return map(fn, tasks)

    kw = dict(uncertainty="margin", pick="typical", candidate_ratio=10, alloc_over="global", random_state=0)
    HierarchicalQuery(typical_scale="flat", coarse_k=8, map_fn=record, **kw).select(pool, 40)
    total = sum(t.emb.shape[0] for t in seen)
    assert total == 400 and len(seen) > 1
    for t in seen:
        assert t.n_neighbors == max(1, round(20 * t.emb.shape[0] / total))
    seen.clear()
    HierarchicalQuery(coarse_k=8, map_fn=record, **kw).select(pool, 40)
    assert {t.n_neighbors for t in seen} == {20}  # the default: TypiClust's 20 in every coarse cluster
    # one coarse cluster holds all the candidates: every scale is the flat variant's
    one = [
        HierarchicalQuery(typical_scale=s, coarse_k=1, **kw).select(pool, 40)
        for s in ("flat", "cluster", "global")
    ]
    np.testing.assert_array_equal(one[0], one[1])
    np.testing.assert_array_equal(one[0], one[2])
    # global: every task gets the flat variant's density, 20 neighbours among all the candidates
    seen.clear()
    q = HierarchicalQuery(typical_scale="global", coarse_k=8, map_fn=record, **kw)
    q.select(pool, 40)
    assert len(seen) > 1 and sum(t.emb.shape[0] for t in seen) == 400
    whole = typicality(np.concatenate([t.emb for t in seen]))  # 20 neighbours among all 400 candidates
    np.testing.assert_allclose(np.concatenate([t.density for t in seen]), whole, rtol=1e-5)
    flat_scale = [typicality(t.emb, max(1, round(20 * t.emb.shape[0] / 400))) for t in seen]
    assert not np.allclose(whole, np.concatenate(flat_scale))  # not "flat": 1-4 neighbours of a cluster
    # above 4,096 candidates: against a sample of them, k scaled; the same ranking in the large
    cands = [np.arange(0, 5000, 2), np.arange(1, 5000, 2)]
    emb = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    approx = np.concatenate(q._candidate_density(emb, cands, 0))
    exact = typicality(emb[np.concatenate(cands)])
    assert approx.shape == (5000,) and np.corrcoef(approx, exact)[0, 1] > 0.9


def test_reference_typicality_is_the_density_of_the_reference_rows_around_each_candidate() -> None:
    from hssal_ray.query.hal_steps import reference_typicality

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 5)).astype(np.float32)
    cand_rows = np.array([3, 77, 150])
    cand = np.concatenate([ref[cand_rows], rng.normal(size=(2, 5)).astype(np.float32)])
    self_pos = np.array([3, 77, 150, -1, -1])
    got = reference_typicality(cand, ref, self_pos, n_neighbors=7, chunk_size=2)
    for i in range(5):
        d = np.linalg.norm(ref - cand[i], axis=1)
        if self_pos[i] >= 0:
            d = np.delete(d, self_pos[i])  # its own row is not a neighbour
        assert got[i] == pytest.approx(1.0 / (np.sort(d)[:7].mean() + 1e-8), rel=1e-4)
    assert (reference_typicality(cand[:1], ref[:1], np.array([0])) == 1.0).all()  # no other row


@pytest.mark.parametrize("strategy", ["hal", "hal_flat"])
def test_typical_over_pool_ranks_candidates_by_the_density_of_the_pool_around_them(strategy: str) -> None:
    from hssal_ray.query import FlatHierarchicalQuery
    from hssal_ray.query.hal_steps import reference_typicality

    pool, _ = blob_pool(n=1500, seed=4)
    seen: list = []

    def record(fn, tasks):
        tasks = list(tasks)
        seen.extend(tasks)
        return map(fn, tasks)

    cls = HierarchicalQuery if strategy == "hal" else FlatHierarchicalQuery
    kw = dict(uncertainty="margin", pick="typical", candidate_ratio=10, alloc_over="global", random_state=0)
    q = cls(typical_over="pool", coarse_k=6, map_fn=record, **kw)
    picks = q.select(pool, 30)
    emb = np.asarray(pool.embeddings, dtype=np.float32)
    coarse = q.coarse_labels_
    for t in seen:
        assert t.density is not None and t.density.shape == (t.emb.shape[0],)
        rows = np.flatnonzero(coarse == coarse[np.flatnonzero((emb == t.emb[0]).all(1))[0]])
        pos = np.array([np.flatnonzero((emb[rows] == e).all(1))[0] for e in t.emb])
        np.testing.assert_allclose(t.density, reference_typicality(t.emb, emb[rows], pos), rtol=1e-5)
    seen.clear()
    other = cls(coarse_k=6, map_fn=record, **kw).select(pool, 30)  # density among the candidates
    assert all(t.density is None for t in seen)
    assert set(picks.tolist()) != set(other.tolist())
