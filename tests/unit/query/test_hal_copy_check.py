"""``query.copy_check``: the boundary check over every pair of picks, of one coarse cluster too."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool, compute_all
from hssal_ray.query.hal_steps import cross_cluster_duplicates

from ._data import blob_pool


def _line() -> tuple[np.ndarray, np.ndarray]:
    """One coarse cluster on a line: rows at x = 0, 1, ..., 9, except row 5 at 4.1 (a near-copy of row 4)."""
    x = np.arange(10.0)
    x[5] = 4.1
    return np.stack([x, np.zeros_like(x)], 1).astype(np.float32), np.zeros(10, dtype=np.int64)


def test_a_near_copy_inside_one_coarse_cluster_is_replaced_only_with_within() -> None:
    emb, coarse = _line()
    picks = np.array([4, 5, 0, 9])  # priority order: 4, then its near-copy 5 (another fine cluster)
    cands = [np.array([4, 5, 0, 9, 2, 7, 6])]
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse)
    np.testing.assert_array_equal(out, picks)  # the boundary check alone: one cluster, nothing to do
    assert info["n_dropped"] == 0
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse, within=True)
    # radius: non-picks' distance to the nearest pick: 2 -> 4: 2, 7 -> 9: 2, 6 -> 4.1: 1.9; lower median 2
    assert info["radius"] == pytest.approx(2.0)
    assert info["n_dropped"] == 1 and info["n_replaced"] == 1
    # 2 is the first candidate >= 2 from every kept pick (4, 0, 9); 7 and 6 come later in priority order
    np.testing.assert_array_equal(out, [4, 0, 9, 2])


def _copies_pool(copies: int = 5, seed: int = 3) -> tuple[Pool, np.ndarray]:
    base, _ = blob_pool(n=400, d=16, n_blobs=6, seed=seed, fp16=False)
    rng = np.random.default_rng(0)
    X = np.repeat(np.asarray(base.embeddings), copies, axis=0)
    X += 0.02 * rng.standard_normal(X.shape).astype(np.float32)  # near-copies of every scene
    P = np.repeat(np.asarray(base.probs), copies, axis=0)
    n = X.shape[0]
    pool = Pool(
        ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        embeddings=X,
        probs=P,
        scores=compute_all(P, X),
    )
    return pool, np.repeat(np.arange(400), copies)


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_few_candidates_per_pick_on_repeated_scenes_pick_more_scenes_with_the_check(cls: type) -> None:
    pool, group = _copies_pool()
    kw = dict(
        uncertainty="margin",
        pick="auto",
        typical_until=0.0,
        candidate_ratio=10,
        late_candidate_ratio=3,
        alloc_over="global",
        boundary_check=True,
        coarse_k=8,
        random_state=0,
    )
    plain = cls(**kw).select(pool, 60)
    q = cls(copy_check=True, **kw)
    checked = q.select(pool, 60)
    assert checked.size == 60 and np.unique(checked).size == 60
    assert np.unique(group[plain]).size < 60  # r = 3 over 5 copies: a scene spans two fine clusters
    assert q.info_["boundary"]["n_dropped"] >= 1
    assert np.unique(group[checked]).size > np.unique(group[plain]).size


def test_a_bad_value_is_rejected_and_only_hal_based_runs_read_it() -> None:
    with pytest.raises(Exception, match="copy_check"):
        load_config(None, ["query.copy_check=sometimes"])
    with pytest.raises(ValueError, match="copy_check"):
        HierarchicalQuery(copy_check="sometimes").select(blob_pool(n=100, seed=0)[0], 5)
    for strategy, read in (("hal", True), ("hal_flat", True), ("margin", False)):
        cfg = load_config(None, [f"query.strategy={strategy}", "query.copy_check=late"])
        assert cfg.query.copy_check == "late"
        assert ("query.copy_check" not in unused_keys(cfg)) is read


def test_spares_set_the_radius_and_replace_a_copy_no_candidate_can() -> None:
    # candidates: copies of scene A (rows 0-3 near (0, 0)) and of scene B (rows 4-7 near (20, 0));
    # spares: rows 8-15 at (0, 3) .. (0, 10), other scenes
    x = np.array([0.0, 0.03, 0.031, 0.032, 20.0, 20.001, 20.002, 20.003, *np.zeros(8)])
    y = np.concatenate([np.zeros(8), np.arange(3.0, 11.0)])
    emb = np.stack([x, y], 1).astype(np.float32)
    coarse = np.zeros(x.size, dtype=np.int64)
    picks = np.array([0, 4, 1])  # row 1 is a second copy of scene A, in another fine cluster
    cands = [np.arange(8)]
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse, within=True)
    # among the candidates alone the radius is a copy's scale (0.002): row 1 stays a pick
    assert info["radius"] == pytest.approx(0.002, abs=1e-4)
    assert info["n_dropped"] == 0 and set(out.tolist()) == {0, 1, 4}
    out, info = cross_cluster_duplicates(emb, picks, cands, coarse, within=True, spares=[np.arange(8, 16)])
    # with the spares: 0.001, 0.001, 0.002, 0.002, 0.003 and 3 .. 10 (to scene A): the lower median is 4
    assert info["radius"] == pytest.approx(4.0, abs=1e-4)
    assert info["n_dropped"] == 1 and info["n_replaced"] == 1
    # no candidate is 4 from the batch; the first spare that is: (0, 4), row 9
    np.testing.assert_array_equal(out, [0, 4, 9])
