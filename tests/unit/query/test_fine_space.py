"""HAL's fine level in BADGE's gradient-embedding space (``query.fine_space``)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import DataError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import FlatHierarchicalQuery, HierarchicalQuery, Pool, write_scores
from hssal_ray.query.hal_steps import ClusterTask, _select_in_cluster, gradient_embedding

from ._data import GLOBAL_HAL, blob_pool, with_labeled


def test_gradient_embedding_is_the_last_layer_gradient_at_the_predicted_class() -> None:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((7, 4)).astype(np.float32)
    p = rng.dirichlet(np.ones(3), size=7).astype(np.float32)
    g = gradient_embedding(h, p)
    assert g.shape == (7, 12) and g.dtype == np.float32
    for i in range(7):  # d CE(W h, y_hat) / dW = (p - e_{y_hat}) h^T, row-major
        a = p[i].copy()
        a[np.argmax(a)] -= 1.0
        np.testing.assert_allclose(g[i], np.outer(a, h[i]).ravel(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.linalg.norm(g, axis=1),
        np.linalg.norm(h, axis=1) * np.linalg.norm(p - np.eye(3)[p.argmax(1)], axis=1),
        rtol=1e-5,
    )  # BADGE's norm (``u_badge``)
    assert p.min() > 0  # the input was not changed in place (a one-hot would have left a negative)
    with pytest.raises(ValueError, match="gradient_embedding"):
        gradient_embedding(h, p[:5])


def _two_by_two(probs: bool) -> ClusterTask:
    # rows 0, 1 share a feature, rows 2, 3 share a nearby one; rows 0, 2 lean to class 0, rows 1, 3 to class 1
    h = np.array([[1.0, 0.3], [1.0, 0.3], [1.0, -0.3], [1.0, -0.3]], dtype=np.float32)
    p = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]], dtype=np.float32)
    return ClusterTask(
        cluster=0,
        emb=h,
        u=np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32),  # priority order
        n_picks=2,
        pick="uncertain",
        backend="torch",
        probs=p if probs else None,
    )


def test_gradients_split_a_region_by_the_class_the_model_leans_to() -> None:
    # features: {0, 1} and {2, 3}, one pick each; gradients: {0, 2} (class 0) and {1, 3} (class 1)
    assert _select_in_cluster(_two_by_two(probs=False)).tolist() == [0, 2]
    assert _select_in_cluster(_two_by_two(probs=True)).tolist() == [0, 1]


def test_labeled_rows_join_the_gradient_space_too() -> None:
    task = _two_by_two(probs=True)
    lab = np.array([[1.0, 0.3]], dtype=np.float32)
    lab_p = np.array([[0.6, 0.4]], dtype=np.float32)
    with_lab = ClusterTask(**{**task.__dict__, "labeled": lab, "labeled_probs": lab_p})
    # the labeled row covers the class-0 gradients {0, 2}: both picks come from the other clusters
    picks = _select_in_cluster(with_lab)
    assert 1 in picks.tolist() and 0 not in picks.tolist()
    with pytest.raises(ValueError, match="labeled_probs"):
        _select_in_cluster(ClusterTask(**{**task.__dict__, "labeled": lab}))


def _late_pool(n_labeled: int) -> Pool:
    return with_labeled(blob_pool(n=500, seed=3)[0], np.arange(n_labeled))


@pytest.mark.parametrize("cls", [HierarchicalQuery, FlatHierarchicalQuery])
def test_late_clusters_gradients_only_once_picks_are_uncertain(cls) -> None:
    kw = {**GLOBAL_HAL, "pick": "auto", "typical_until": 3.0, "candidate_ratio": 3}
    early, late = _late_pool(10), _late_pool(40)  # 5 classes: 2 and 8 labels per class
    for pool, rule in ((early, "typical"), (late, "uncertain")):
        base = cls(**kw).select(pool, 12)
        grad = cls(**kw, fine_space="gradient").select(pool, 12)
        lat = cls(**kw, fine_space="late").select(pool, 12)
        assert cls(**kw).pick_rule(pool) == rule
        assert grad.tolist() != base.tolist()  # the space changes the batch on this pool
        assert lat.tolist() == (base if rule == "typical" else grad).tolist()


def test_gradient_space_needs_probs_and_a_known_value() -> None:
    pool, _ = blob_pool(n=200, seed=1)
    bare = Pool(ids=pool.ids, embeddings=pool.embeddings, scores=pool.scores)
    with pytest.raises(DataError, match="fine_space"):
        HierarchicalQuery(**GLOBAL_HAL, fine_space="gradient").select(bare, 10)
    assert len(HierarchicalQuery(**GLOBAL_HAL, fine_space="late", pick="uncertain").select(pool, 10)) == 10
    with pytest.raises(Exception, match="fine_space"):
        HierarchicalQuery(fine_space="grad")._check_params()
    with pytest.raises(Exception, match="fine_space"):
        load_config(None, ["query.fine_space=grad"])
    for strategy in ("hal", "hal_flat"):  # both levels' variants read it
        cfg = load_config(None, [f"query.strategy={strategy}", "query.fine_space=late"])
        assert cfg.query.fine_space == "late" and "query.fine_space" not in unused_keys(cfg)


def test_cli_loads_probs_for_a_gradient_fine_level(tmp_path, capsys) -> None:
    from hssal_ray.query.__main__ import main

    pool, _ = blob_pool(n=300, seed=7)
    path = tmp_path / "scores.parquet"
    write_scores(str(path), pool.ids, pool.embeddings, pool.probs, pool.scores)
    argv = [str(path), "--budget", "12", "--backend", "torch", "--uncertainty", "margin"]
    assert main([*argv, "--set", "query.fine_space=gradient"]) == 0
    grad = capsys.readouterr().out.strip().splitlines()[1:]
    assert main(argv) == 0
    base = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(grad) == len(base) == 12 and grad != base


def test_a_fine_problem_too_large_for_gradients_is_refused_before_it_is_built(monkeypatch) -> None:
    import hssal_ray.query.hierarchical as hier
    from hssal_ray.errors import ConfigError

    pool, _ = blob_pool(n=300, seed=2)  # d = 16, C = 5: 80 floats per candidate
    kw = {**GLOBAL_HAL, "pick": "uncertain", "candidate_ratio": 3, "fine_space": "gradient"}
    monkeypatch.setattr(hier, "MAX_GRADIENT_BYTES", 4 * 80 * 30 - 1)  # 30 candidates: 1 byte over
    with pytest.raises(ConfigError, match=r"30 rows x 5 classes x 16 dims"):
        FlatHierarchicalQuery(**kw).select(pool, 10)
    assert len(HierarchicalQuery(**kw).select(pool, 10)) == 10  # 6 coarse clusters: smaller problems
    monkeypatch.setattr(hier, "MAX_GRADIENT_BYTES", 4 * 80 * 30)
    assert len(FlatHierarchicalQuery(**kw).select(pool, 10)) == 10


def test_auto_local_takes_the_space_of_each_clusters_own_rule() -> None:
    # auto_local decides typical/uncertain per coarse cluster: `late` follows each cluster's rule
    base, blob = blob_pool(n=500, seed=3)
    pool = with_labeled(base, np.flatnonzero(blob == 0)[:15])  # one region labeled: it alone switches
    kw = {**GLOBAL_HAL, "pick": "auto_local", "typical_until": 3.5, "candidate_ratio": 3}
    q = HierarchicalQuery(**kw, fine_space="late")
    got = q.select(pool, 12)
    assert q.info_["pick"] == "mixed"  # typical and uncertain clusters in one round: the case at hand
    assert HierarchicalQuery(**kw).pick_rule(pool) == "typical"  # 3 labels a class: the round's rule
    assert got.tolist() != HierarchicalQuery(**kw).select(pool, 12).tolist()
    assert got.tolist() != HierarchicalQuery(**kw, fine_space="gradient").select(pool, 12).tolist()
