"""HAL: budget allocation, fine-level picks, known answers and the acceptance test vs random."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hssal_ray.config import load_config
from hssal_ray.errors import BudgetError, ConfigError, DataError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool, RandomQuery, allocate_budget
from hssal_ray.query.hierarchical import ClusterTask, _select_in_cluster, auto_coarse_k, merge_heads

from ._data import blob_pool


@pytest.mark.parametrize(
    ("mass", "counts", "budget", "expected"),
    [
        ([6, 3, 1], [100, 100, 100], 10, [6, 3, 1]),
        ([0.5, 0.3, 0.2], [100, 100, 100], 7, [4, 2, 1]),  # quotas 3.5/2.1/1.4: largest remainder
        ([10, 1, 1], [2, 100, 100], 6, [2, 2, 2]),  # cap 2, leftovers redistributed
        ([100, 1, 0], [50, 50, 50], 5, [3, 1, 1]),  # floor of one per non-empty cluster
        ([1, 5, 3, 0], [9, 9, 9, 9], 2, [0, 1, 1, 0]),  # budget < clusters: largest mass first
        ([0, 1, 1], [0, 10, 10], 4, [0, 2, 2]),  # empty cluster gets nothing
        ([0, 0, 0], [1, 3, 6], 5, [1, 1, 3]),  # no uncertainty at all: by size
        ([5, 0, 0], [2, 10, 30], 12, [2, 2, 8]),  # positive mass saturated: the rest by size (tie -> larger)
        ([1, 1], [3, 3], 6, [3, 3]),  # the whole pool
    ],
)
def test_allocate_budget_known_answers(mass: list, counts: list, budget: int, expected: list) -> None:
    np.testing.assert_array_equal(allocate_budget(np.array(mass, float), np.array(counts), budget), expected)


def test_allocate_budget_rejects_too_large_budget() -> None:
    with pytest.raises(BudgetError, match="budget 7 .* 6 available"):
        allocate_budget(np.ones(2), np.array([3, 3]), 7)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 40)), min_size=1, max_size=25), st.data())
def test_allocate_budget_properties(clusters: list, data: st.DataObject) -> None:
    mass = np.array([m for m, _ in clusters])
    counts = np.array([c for _, c in clusters])
    budget = data.draw(st.integers(0, int(counts.sum())))
    b = allocate_budget(mass, counts, budget)
    assert b.sum() == budget
    assert (b >= 0).all() and (b <= counts).all()
    nonempty = counts > 0
    if budget >= nonempty.sum():
        assert (b[nonempty] >= 1).all()
    # proportionality: a cluster with more mass (and room) never gets fewer picks than one with less
    free = (b < counts) & nonempty
    for i in np.flatnonzero(free):
        for j in np.flatnonzero(nonempty):
            if mass[i] > mass[j] * 1.0001 + 1e-9 * mass.max() and b[j] > 1:  # < 1e-12 of max counts as 0
                assert b[i] >= b[j] - 1


def _task(emb: np.ndarray, n_picks: int, pick: str = "uncertain", method: str = "kmeans") -> ClusterTask:
    return ClusterTask(
        cluster=0,
        emb=emb.astype(np.float32),
        u=np.linspace(1, 0, len(emb)),
        n_picks=n_picks,
        fine_method=method,
        pick=pick,
        backend="torch",
        seed=0,
    )


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_select_in_cluster_known_picks(method: str) -> None:
    # positions are priority order; group A = {0, 2, 4} around (10, 0), group B = {1, 3, 5} around (-10, 0)
    emb = np.array([[10, 0.5], [-10, 0.7], [10, 0], [-10, 0], [10, -0.5], [-10, -0.6]])
    np.testing.assert_array_equal(_select_in_cluster(_task(emb, 2, "uncertain", method)), [0, 1])
    np.testing.assert_array_equal(_select_in_cluster(_task(emb, 2, "typical", method)), [2, 3])
    np.testing.assert_array_equal(_select_in_cluster(_task(emb, 1)), [0])
    np.testing.assert_array_equal(_select_in_cluster(_task(emb, 6)), np.arange(6))


def test_select_in_cluster_fills_when_fine_clusters_collapse() -> None:
    emb = np.zeros((9, 4))  # all identical: one non-empty fine cluster at most
    np.testing.assert_array_equal(_select_in_cluster(_task(emb, 3)), [0, 1, 2])


def _three_blobs() -> tuple[Pool, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 10
    lab = np.repeat(np.arange(3), 20)
    emb = centers[lab] + 0.1 * rng.standard_normal((60, 8))
    u = np.where(lab == 0, 0.9, 0.3) + 0.001 * rng.random(60)  # blob 0 has 3x the mass
    return Pool(
        ids=np.array([f"r{i}" for i in range(60)], dtype=object),
        embeddings=emb.astype(np.float32),
        scores={"u_badge": u.astype(np.float32)},
    ), lab


def test_hal_known_answer_on_three_blobs() -> None:
    pool, lab = _three_blobs()
    u = pool.scores["u_badge"]
    s = HierarchicalQuery(coarse_k=3, kmeans_backend="torch", random_state=0)
    picks = s.select(pool, 3)  # equal split (mass 3:1:1 but floor of one each) -> argmax u per blob
    assert sorted(picks.tolist()) == sorted(
        int(np.flatnonzero(lab == k)[np.argmax(u[lab == k])]) for k in range(3)
    )
    picks = s.select(pool, 5)  # quotas 3:1:1
    assert np.bincount(lab[picks], minlength=3).tolist() == [3, 1, 1]
    assert sorted(s.info_["budget_per_cluster"].tolist()) == [1, 1, 3]
    assert s.coarse_labels_.shape == (60,) and s.info_["coarse_k"] == 3
    assert (s.info_["pick_coarse_cluster"] == s.coarse_labels_[picks]).all()
    assert list(u[picks]) == sorted(u[picks], reverse=True)  # rank 0 = most uncertain


def test_hal_flat_with_ratio_one_is_top_b() -> None:
    pool, _ = _three_blobs()
    u = pool.scores["u_badge"]
    picks = FlatHierarchicalQuery(candidate_ratio=1.0, random_state=0).select(pool, 7)
    np.testing.assert_array_equal(picks, np.argsort(-u)[:7])


def test_map_fn_is_used_and_tasks_pickle() -> None:
    pool, _ = blob_pool(n=400)
    calls: list[int] = []

    def recording_map(fn, tasks):  # what a Ray runner passes: map-like, results in order
        out = []
        for t in tasks:
            t2 = pickle.loads(pickle.dumps(t))
            calls.append(t2.cluster)
            out.append(pickle.loads(pickle.dumps(fn))(t2))
        return out

    s = HierarchicalQuery(random_state=0, map_fn=recording_map)
    a = s.select(pool, 30)
    np.testing.assert_array_equal(a, HierarchicalQuery(random_state=0).select(pool, 30))
    assert sorted(calls) == np.flatnonzero(s.info_["budget_per_cluster"]).tolist()
    assert len(calls) >= 2


def test_ssl_aware_avoids_confident_rows_and_falls_back() -> None:
    pool, _ = blob_pool(n=400)
    picks = HierarchicalQuery(ssl_aware=True, random_state=0).select(pool, 30)
    assert not pool.confident[picks].any()
    pool.confident = np.ones(400, dtype=bool)  # nothing left that SSL has not learned: fall back
    assert HierarchicalQuery(ssl_aware=True, random_state=0).select(pool, 30).size == 30
    flat = FlatHierarchicalQuery(ssl_aware=True, random_state=0)
    pool.confident[:200] = False
    assert not pool.confident[flat.select(pool, 30)].any()


def test_coarse_fit_on_a_subsample() -> None:
    pool, _ = blob_pool(n=500)
    s = HierarchicalQuery(coarse_fit_sample=100, random_state=0)
    assert s.select(pool, 20).size == 20
    assert s.coarse_labels_.shape == (500,) and (s.coarse_labels_ >= 0).all()
    assert set(s.info_["seconds"]) == {"coarse_fit", "assign", "filter", "eer", "fine", "boundary", "total"}


def test_auto_coarse_k() -> None:
    assert auto_coarse_k(1_000_000, 1000) == 64
    assert auto_coarse_k(1_000_000, 40) == 14
    assert auto_coarse_k(1_000_000, 1) == 1
    assert auto_coarse_k(1_000_000, 2) == 2
    assert auto_coarse_k(5, 100) == 5


def test_acceptance_hal_covers_more_clusters_and_is_more_uncertain_than_random() -> None:
    """20 Gaussian blobs of unequal sizes, uncertainty higher in some: HAL beats random on both."""
    rng = np.random.default_rng(42)
    n_blobs, d = 20, 32
    sizes = np.round(np.geomspace(15, 600, n_blobs)).astype(int)
    lab = np.repeat(np.arange(n_blobs), sizes)
    centers = rng.standard_normal((n_blobs, d))
    emb = centers[lab] + 0.25 * rng.standard_normal((lab.size, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hot = rng.permutation(n_blobs)[:6]  # blobs the model is unsure about
    u = rng.uniform(0.05, 0.4, lab.size) + np.isin(lab, hot) * 0.5
    pool = Pool(
        ids=np.array([f"a{i}" for i in range(lab.size)], dtype=object),
        embeddings=emb.astype(np.float16),
        scores={"u_badge": u.astype(np.float32)},
    )
    budget = 40
    hal = HierarchicalQuery(random_state=0).select(pool, budget)
    rand = [RandomQuery(random_state=s).select(pool, budget) for s in range(10)]
    hal_cov, rand_cov = len(set(lab[hal])), np.mean([len(set(lab[r])) for r in rand])
    hal_u, rand_u = u[hal].mean(), np.mean([u[r].mean() for r in rand])
    assert hal_cov > rand_cov, (hal_cov, rand_cov)
    assert hal_u > rand_u, (hal_u, rand_u)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hal_on_cuda_embeddings_matches_cpu() -> None:
    pool, lab = blob_pool(n=2000, d=32, n_blobs=10)
    gpu = Pool(ids=pool.ids, embeddings=torch.from_numpy(pool.embeddings).cuda(), scores=pool.scores)
    s_gpu = HierarchicalQuery(kmeans_backend="torch", random_state=0)
    picks_gpu = s_gpu.select(gpu, 40)
    picks_cpu = HierarchicalQuery(kmeans_backend="torch", random_state=0).select(pool, 40)
    assert picks_gpu.size == 40 and np.unique(picks_gpu).size == 40
    assert len(set(picks_gpu.tolist()) & set(picks_cpu.tolist())) >= 30  # float differences may move a few


def test_auto_pick_turns_from_typical_to_uncertain_with_labels_per_class() -> None:
    pool, _ = blob_pool(n=400)
    c = pool.probs.shape[1]
    s = HierarchicalQuery(pick="auto", typical_until=2.0, random_state=0)
    pool.exclude = np.zeros(400, dtype=bool)
    pool.exclude[: 2 * c - 1] = True  # just under two labels per class: typical
    assert s.pick_rule(pool) == "typical"
    picks = s.select(pool, 12)
    assert s.info_["pick"] == "typical"
    np.testing.assert_array_equal(picks, HierarchicalQuery(pick="typical", random_state=0).select(pool, 12))
    pool.exclude[: 2 * c] = True  # two per class: uncertain, the same picks as pick="uncertain"
    picks = s.select(pool, 12)
    assert s.info_["pick"] == "uncertain"
    np.testing.assert_array_equal(picks, HierarchicalQuery(pick="uncertain", random_state=0).select(pool, 12))
    flat = FlatHierarchicalQuery(pick="auto", typical_until=2.0, random_state=0)
    flat.select(pool, 12)
    assert flat.info_["pick"] == "uncertain"


def test_balanced_pick_trades_uncertainty_against_typicality() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(0.0, 0.05, size=(8, 2))  # a tight group: typical
    outlier = np.array([[3.0, 3.0]])  # far away: least typical
    emb = np.vstack([outlier, dense]).astype(np.float32)  # priority order: the outlier is most uncertain
    task = ClusterTask(cluster=0, emb=emb, u=np.linspace(1, 0, 9), n_picks=1, pick="balanced")
    pick = int(_select_in_cluster(task)[0])
    assert pick != 0  # the most uncertain point is the least typical: balanced passes it over
    typical = int(_select_in_cluster(ClusterTask(0, emb, np.linspace(1, 0, 9), 1, pick="typical"))[0])
    assert pick <= typical  # among the typical ones it prefers the more uncertain (earlier) rows
    assert int(_select_in_cluster(ClusterTask(0, emb, np.linspace(1, 0, 9), 1, pick="uncertain"))[0]) == 0


def test_select_in_cluster_skips_fine_clusters_that_hold_a_labeled_row() -> None:
    # candidate groups A ~ (10, 0), B ~ (-10, 0), C ~ (0, 10); a labeled row in A
    emb = np.array([[10, 0.5], [-10, 0.7], [0, 10.2], [10, 0], [-10, 0], [0, 9.8]], dtype=np.float32)
    labeled = np.array([[10.0, 0.1]], dtype=np.float32)
    covered = ClusterTask(
        cluster=0, emb=emb, u=np.zeros(6, np.float32), n_picks=2, backend="torch", seed=0, labeled=labeled
    )
    np.testing.assert_array_equal(_select_in_cluster(covered), [1, 2])  # A covered: B, C
    # more picks than uncovered clusters: the covered cluster's best candidate fills the batch
    three = ClusterTask(
        cluster=0, emb=emb, u=np.zeros(6, np.float32), n_picks=3, backend="torch", seed=0, labeled=labeled
    )
    np.testing.assert_array_equal(_select_in_cluster(three), [0, 1, 2])


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_cover_labeled_moves_picks_away_from_labeled_rows(cls: type) -> None:
    pool, lab = blob_pool(n=800, n_blobs=8, seed=3, fp16=False)
    labeled = np.flatnonzero(lab < 4)[::5]  # blobs 0-3 hold labels, blobs 4-7 none
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[labeled] = True
    base = cls(candidate_ratio=10, kmeans_backend="torch", random_state=0).select(pool, 8)
    cover = cls(candidate_ratio=10, kmeans_backend="torch", random_state=0, cover_labeled=True)
    cover = cover.select(pool, 8)
    assert not pool.exclude[cover].any() and len(set(cover.tolist())) == 8
    assert (lab[cover] >= 4).sum() > (lab[base] >= 4).sum()
    assert (lab[cover] >= 4).sum() >= 6


def test_cover_scale_flat_gives_a_covered_coarse_cluster_s_picks_to_an_uncovered_one() -> None:
    """Eight blobs in two coarse clusters: A (blobs 0-3) the more uncertain, each of its blobs
    holding a label; B (blobs 4-7) without labels. By mass A takes 5 of the 8 picks and the
    cluster-scale coverage must spend them in A, leaving a blob of B without a pick; at the flat
    variant's scale B's uncovered fine clusters are the largest and every blob of B gets one."""
    rng = np.random.default_rng(0)
    centers = [(20, 0), (20, 8), (28, 0), (28, 8), (-20, 0), (-20, 8), (-28, 0), (-28, 8)]
    emb = np.concatenate([rng.normal(size=(50, 2)) + c for c in centers]).astype(np.float32)
    blob = np.repeat(np.arange(8), 50)
    u = np.where(blob < 4, 0.9, 0.5).astype(np.float32) + rng.uniform(0, 0.01, 400).astype(np.float32)
    exclude = np.zeros(400, dtype=bool)
    exclude[[0, 50, 100, 150]] = True
    pool = Pool(ids=np.arange(400).astype(str), embeddings=emb, scores={"u_margin": u}, exclude=exclude)
    kw = {"uncertainty": "margin", "coarse_k": 2, "candidate_ratio": 50, "alloc_over": "global"}
    kw |= {"cover_labeled": True, "kmeans_backend": "torch", "random_state": 0}
    by_mass = HierarchicalQuery(**kw).select(pool, 8)
    flat = HierarchicalQuery(cover_scale="flat", **kw)
    picks = flat.select(pool, 8)
    assert len(set(blob[by_mass[blob[by_mass] >= 4]].tolist())) == 3
    assert set(blob[picks[blob[picks] >= 4]].tolist()) == {4, 5, 6, 7}
    assert len(set(picks.tolist())) == 8 and not exclude[picks].any()
    assert sorted(flat.info_["budget_per_cluster"].tolist()) == [4, 4]  # what the coverage gave each


def test_merge_heads_takes_uncovered_then_largest_then_most_uncertain() -> None:
    rows = np.array([10, 11, 12, 13, 14])
    n_lab = np.array([0, 1, 0, 0, 2])
    n_cand = np.array([3, 9, 5, 5, 1])
    u = np.array([0.1, 0.9, 0.2, 0.7, 0.5])
    np.testing.assert_array_equal(merge_heads(rows, n_lab, n_cand, u, 4), [13, 12, 10, 11])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"cover_labeled": False}, "cover_labeled=False"),
        ({"alloc_over": "pool"}, "alloc_over='pool'"),
        ({"pick": "auto", "early_pick": "cover"}, "'cover' pick"),
        ({"alloc_temper": 2.0}, "alloc_temper=2.0"),
        ({"alloc_round_robin": True}, "alloc_round_robin"),
    ],
)
def test_cover_scale_flat_rejects_what_it_cannot_run_with(extra: dict, match: str) -> None:
    kw = {"cover_labeled": True, "alloc_over": "global", "cover_scale": "flat"} | extra
    with pytest.raises(ConfigError, match=match):
        HierarchicalQuery(**kw)._check_params()
    FlatHierarchicalQuery(**kw)._check_params()  # one clustering: the option changes nothing there
    with pytest.raises(ConfigError, match="query.cover_scale"):  # the loop says so before it trains
        load_config(None, [f"query.{k}={str(v).lower()}" for k, v in kw.items()])


def test_cover_scale_is_read_by_hal_only_and_loads_from_a_config() -> None:
    args = ["query.cover_scale=flat", "query.cover_labeled=true", "query.alloc_over=global"]
    assert load_config(None, args).query.cover_scale == "flat"
    assert "query.cover_scale" not in unused_keys(load_config(None, args))
    assert "query.cover_scale" in unused_keys(load_config(None, [*args, "query.strategy=hal_flat"]))


def test_alloc_over_candidates_follows_the_most_uncertain_rows() -> None:
    """Two blobs of equal uncertainty mass: one large and mildly uncertain, one small with the
    pool's most uncertain rows. Summed over the pool the two share the budget; summed over the
    r * B candidates the small one takes it, and the large one keeps its one pick."""
    rng = np.random.default_rng(0)
    big = rng.normal(size=(400, 2)).astype(np.float32) + np.float32(20)
    small = rng.normal(size=(40, 2)).astype(np.float32) - np.float32(20)
    emb = np.concatenate([big, small])
    u = np.concatenate([np.full(400, 0.1), np.linspace(0.9, 1.1, 40)]).astype(np.float32)
    pool = Pool(ids=np.arange(440).astype(str), embeddings=emb, scores={"u_badge": u})
    kw = {"coarse_k": 2, "candidate_ratio": 3, "kmeans_backend": "torch", "random_state": 0}
    over_pool = HierarchicalQuery(**kw).select(pool, 10)
    over_cand = HierarchicalQuery(alloc_over="candidates", **kw)
    picks = over_cand.select(pool, 10)
    assert (over_pool >= 400).sum() == 5  # mass 40 vs 40: half each
    assert (picks >= 400).sum() == 9 and (picks < 400).sum() == 1
    assert sorted(over_cand.info_["budget_per_cluster"].tolist()) == [1, 9]
    with pytest.raises(Exception, match="alloc_over"):
        HierarchicalQuery(alloc_over="rows")._check_params()


#: ``pick: auto`` on a 4-class pool: typical below 12 labels, uncertain from 12
AUTO_KW = {
    "pick": "auto",
    "typical_until": 3,
    "candidate_ratio": 3,
    "kmeans_backend": "torch",
    "random_state": 0,
}


@pytest.mark.parametrize(
    ("n_labeled", "rule", "over"), [(2, "typical", "pool"), (12, "uncertain", "candidates")]
)
def test_alloc_over_auto_follows_the_pick_rule(n_labeled: int, rule: str, over: str) -> None:
    """``auto``: by the pool's mass while picks are typical, by the candidates' once they are uncertain."""
    pool, _ = blob_pool(n=600, n_blobs=6, seed=2, fp16=False)
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[:n_labeled] = True  # 4 classes x typical_until 3 = 12 labels switch the rule
    pool.probs = np.full((len(pool), 4), 0.25, dtype=np.float32)
    kw = AUTO_KW
    auto = HierarchicalQuery(alloc_over="auto", **kw)
    picks = auto.select(pool, 12)
    assert auto.info_["pick"] == rule and auto.info_["alloc_over"] == over
    fixed = HierarchicalQuery(alloc_over=over, **kw)
    np.testing.assert_array_equal(picks, fixed.select(pool, 12))
    np.testing.assert_array_equal(auto.info_["budget_per_cluster"], fixed.info_["budget_per_cluster"])
    other = HierarchicalQuery(alloc_over="candidates" if over == "pool" else "pool", **kw)
    other.select(pool, 12)  # the two allocations differ on this pool, so the rule is what chose
    assert not np.array_equal(other.info_["budget_per_cluster"], fixed.info_["budget_per_cluster"])


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_late_uncertainty_ranks_once_auto_turns_uncertain(cls: type) -> None:
    pool, _ = blob_pool(n=600, n_blobs=6, seed=4, fp16=False)
    pool.scores["u_margin"] = -pool.scores["u_badge"]  # the opposite ranking: the picks must move
    pool.probs = np.full((len(pool), 4), 0.25, dtype=np.float32)  # 4 classes: typical_until 3 = 12 labels
    pool.exclude = np.zeros(len(pool), dtype=bool)
    kw = AUTO_KW
    late = cls(late_uncertainty="margin", **kw)
    pool.exclude[:2] = True  # typical: the candidates still come from ``uncertainty``
    assert late.ranking(pool) == "badge"
    np.testing.assert_array_equal(late.select(pool, 10), cls(**kw).select(pool, 10))
    pool.exclude[:12] = True  # uncertain: ranked, allocated and picked by margin
    assert late.ranking(pool) == "margin"
    same_as = cls(**{**kw, "uncertainty": "margin"})
    np.testing.assert_array_equal(late.select(pool, 10), same_as.select(pool, 10))
    assert not np.array_equal(late.select(pool, 10), cls(**kw).select(pool, 10))
    assert cls(pick="uncertain", late_uncertainty="margin").ranking(pool) == "badge"  # only with auto
    with pytest.raises(Exception, match="late_uncertainty"):
        cls(late_uncertainty="flips")._check_params()
    weak_strong = cls(late_uncertainty="disagreement", **kw)  # a column the score stage writes on request
    with pytest.raises(DataError, match="u_disagreement"):
        weak_strong.select(pool, 10)  # not computed from probs: a clear error, not a silent fallback
    pool.scores["u_disagreement"] = pool.scores["u_margin"].copy()
    np.testing.assert_array_equal(weak_strong.select(pool, 10), same_as.select(pool, 10))


def test_auto_local_picks_uncertain_where_labels_are_and_typical_elsewhere() -> None:
    pool, lab = _three_blobs()
    pool.probs = np.full((60, 2), 0.5, dtype=np.float32)  # 2 classes: typical_until=3 asks 6 labels
    pool.exclude = np.zeros(60, dtype=bool)
    pool.exclude[np.flatnonzero(lab == 0)[:3]] = True  # blob 0 holds 3 labels >= its share 6 * 20/60 = 2
    s = HierarchicalQuery(
        coarse_k=3, pick="auto_local", typical_until=3, kmeans_backend="torch", random_state=0
    )
    rules = s._local_rules(pool, lab, 3)
    assert rules == ["uncertain", "typical", "typical"]
    s.select(pool, 6)
    assert s.info_["pick"] == "mixed"
    glob = HierarchicalQuery(coarse_k=3, pick="auto", typical_until=3, kmeans_backend="torch", random_state=0)
    assert glob.pick_rule(pool) == "typical"  # 3 labels < 6: the global rule stays typical everywhere
    pool.exclude[np.flatnonzero(lab == 1)[:2]] = True
    pool.exclude[np.flatnonzero(lab == 2)[:1]] = True
    assert s._local_rules(pool, lab, 3) == ["uncertain", "uncertain", "typical"]


def test_coarse_fit_sample_has_one_lower_bound_in_config_and_strategy() -> None:
    from hssal_ray.config import load_config
    from hssal_ray.config.loop import MIN_COARSE_FIT_SAMPLE
    from hssal_ray.errors import ConfigError

    HierarchicalQuery(coarse_fit_sample=MIN_COARSE_FIT_SAMPLE)._check_params()
    with pytest.raises(ConfigError, match="coarse_fit_sample"):
        HierarchicalQuery(coarse_fit_sample=MIN_COARSE_FIT_SAMPLE - 1)._check_params()
    with pytest.raises(ConfigError, match="coarse_fit_sample"):
        load_config(None, [f"query.coarse_fit_sample={MIN_COARSE_FIT_SAMPLE - 1}"])


def test_alloc_over_global_splits_the_flat_candidates() -> None:
    """``global``: the flat variant's r*B candidates are the only candidates; empty clusters get none."""
    pool, blob = blob_pool(n=600, n_blobs=6, seed=5, fp16=False)
    noise = np.random.default_rng(0).random(len(pool)).astype(np.float32)
    pool.scores["u_badge"] = np.where(blob < 2, 1.0 + noise, 0.1 * noise)  # doubt in two blobs only
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[:10] = True
    kw = {"candidate_ratio": 2, "coarse_k": 8, "random_state": 0}
    q = HierarchicalQuery(alloc_over="global", **kw)
    picks = q.select(pool, 20)
    flat = FlatHierarchicalQuery(candidate_ratio=2, random_state=0)
    flat.select(pool, 20)
    u = pool.uncertainty("badge")
    cand = np.flatnonzero(~pool.exclude)[np.argsort(-u[~pool.exclude], kind="stable")[:40]]
    assert set(picks) <= set(cand) and picks.size == 20 == np.unique(picks).size
    assert q.info_["n_candidates"] == flat.info_["n_candidates"] == 40
    held = np.bincount(q.coarse_labels_[cand], minlength=8)
    b = q.info_["budget_per_cluster"]
    assert b.sum() == 20 and (b <= held).all() and (b[held == 0] == 0).all()
    assert (held == 0).any()  # this pool has coarse clusters without candidates: they get nothing


def test_coarse_fit_candidates_splits_the_candidates_along_their_own_groups() -> None:
    """Two dense confident blobs (x = -10, +10) and two groups of uncertain rows between them
    (y = +5, -5). A coarse level fitted on the pool puts its boundary between the blobs, through
    both groups; fitted on the candidates it puts each group in one coarse cluster."""
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(size=(500, 2)) + (-10, 0), rng.normal(size=(500, 2)) + (10, 0)])
    groups = np.concatenate([rng.normal(size=(20, 2)) + (0, 5), rng.normal(size=(20, 2)) + (0, -5)])
    emb = np.concatenate([blobs, groups]).astype(np.float32)
    u = np.concatenate([np.full(1000, 0.1), np.full(40, 0.9)]).astype(np.float32)
    pool = Pool(ids=np.arange(1040).astype(str), embeddings=emb, scores={"u_margin": u})
    kw = {"uncertainty": "margin", "coarse_k": 2, "candidate_ratio": 4, "alloc_over": "global"}
    kw |= {"kmeans_backend": "torch", "random_state": 0}
    group = np.repeat([0, 1], 20)
    for fit, split in (("pool", True), ("candidates", False)):
        q = HierarchicalQuery(coarse_fit=fit, **kw)
        picks = q.select(pool, 10)
        coarse = q.coarse_labels_[1000:]
        cut = any(len(set(coarse[group == g].tolist())) > 1 for g in (0, 1))
        assert cut is split, fit
        assert len(set(picks.tolist())) == 10 and (picks >= 1000).all()
    with pytest.raises(ConfigError, match="coarse_fit='candidates'"):
        HierarchicalQuery(coarse_fit="candidates", alloc_over="pool")._check_params()
    with pytest.raises(ConfigError, match="query.coarse_fit"):
        load_config(None, ["query.coarse_fit=candidates", "query.alloc_over=pool"])
