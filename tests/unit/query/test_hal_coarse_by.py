"""HAL's coarse level read from the model's classes (query.coarse_by) instead of a k-means."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import DataError
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import HierarchicalQuery, Pool
from hssal_ray.query.hierarchical import class_groups

from ._data import GLOBAL_HAL, blob_pool


def test_class_groups_known_answers() -> None:
    probs = np.array(
        [
            [0.6, 0.3, 0.1],  # pred 0, pair (0, 1)
            [0.2, 0.3, 0.5],  # pred 2, pair (1, 2)
            [0.1, 0.5, 0.4],  # pred 1, pair (1, 2)
            [0.7, 0.1, 0.2],  # pred 0, pair (0, 2)
            [0.4, 0.4, 0.2],  # tie: pred 0 (lower index), pair (0, 1)
        ],
        dtype=np.float32,
    )
    pool = Pool(ids=np.array([f"r{i}" for i in range(5)], dtype=object), probs=probs)
    groups, k = class_groups(pool, "predicted")
    assert (groups.tolist(), k) == ([0, 2, 1, 0, 0], 3)
    groups, k = class_groups(pool, "confusion")  # pairs (0,1)=1, (0,2)=2, (1,2)=5 -> 0, 1, 2
    assert (groups.tolist(), k) == ([0, 2, 2, 1, 0], 3)
    pool.pred = np.array([2, 2, 2, 2, 1])  # the scores file's own prediction wins when it is there
    groups, k = class_groups(pool, "predicted")
    assert (groups.tolist(), k) == ([1, 1, 1, 1, 0], 2)


def test_class_groups_clear_errors() -> None:
    bare = Pool(ids=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match="'pred' or 'probs'"):
        class_groups(bare, "predicted")
    with pytest.raises(DataError, match="'probs'"):
        class_groups(bare, "confusion")
    one = Pool(ids=np.array(["a"], dtype=object), probs=np.ones((1, 1), np.float32))
    with pytest.raises(DataError, match=">= 2 classes"):
        class_groups(one, "confusion")


@pytest.mark.parametrize("how", ["predicted", "confusion"])
def test_hal_picks_follow_the_class_groups(how: str) -> None:
    pool, _ = blob_pool(n=800, n_blobs=6, n_classes=5, seed=4, fp16=False)
    q = HierarchicalQuery(**{**GLOBAL_HAL, "coarse_by": how})
    picks = q.select(pool, 30)
    assert picks.size == 30 and np.unique(picks).size == 30
    groups, k = class_groups(pool, how)
    np.testing.assert_array_equal(q.coarse_labels_, groups)
    assert q.info_["coarse_k"] == k and q.info_["coarse_by"] == how
    b = q.info_["budget_per_cluster"]
    # every group's picks are its own rows, as many as its budget
    np.testing.assert_array_equal(np.bincount(groups[picks], minlength=k), b)
    # the same seed gives the same batch; the k-means coarse level gives another one
    again = HierarchicalQuery(**{**GLOBAL_HAL, "coarse_by": how}).select(pool, 30)
    np.testing.assert_array_equal(again, picks)
    assert not np.array_equal(np.sort(HierarchicalQuery(**GLOBAL_HAL).select(pool, 30)), np.sort(picks))


def test_budget_follows_the_uncertain_class() -> None:
    pool, _ = blob_pool(n=800, n_blobs=6, n_classes=4, seed=5, fp16=False)
    probs = np.full((800, 4), 0.02, np.float32)
    cls = np.arange(800) % 4
    probs[np.arange(800), cls] = 0.94
    unsure = cls == 3  # class 3's rows sit on a boundary with class 2
    probs[unsure, 3] = 0.49
    probs[unsure, 2] = 0.47
    pool = Pool(ids=pool.ids, embeddings=pool.embeddings, probs=probs)
    q = HierarchicalQuery(**{**GLOBAL_HAL, "coarse_by": "predicted", "candidate_ratio": 3})
    picks = q.select(pool, 24)
    assert (cls[picks] == 3).mean() > 0.9  # the candidates are class 3's rows: so is the budget


def test_nan_embeddings_are_a_clear_error() -> None:
    pool, _ = blob_pool(n=200, seed=6, fp16=False)
    pool.embeddings[17] = np.nan
    with pytest.raises(DataError, match="NaN or inf in 1 rows: \\[17\\]"):
        HierarchicalQuery(**{**GLOBAL_HAL, "coarse_by": "predicted"}).select(pool, 10)


def test_config_flat_variant_ignores_it_and_bad_values_are_rejected() -> None:
    assert load_config(None, ["query.coarse_by=confusion"]).query.coarse_by == "confusion"
    flat = load_config(None, ["query.strategy=hal_flat", "query.coarse_by=predicted"])
    assert "query.coarse_by" in unused_keys(flat)
    assert "query.coarse_by" not in unused_keys(load_config(None, ["query.coarse_by=predicted"]))
    with pytest.raises(Exception, match="coarse_by"):
        load_config(None, ["query.coarse_by=classes"])
    with pytest.raises(Exception, match="coarse_by"):
        HierarchicalQuery(coarse_by="classes")._check_params()


def test_cli_reads_the_classes_from_pred_or_probs(tmp_path, capsys) -> None:
    from hssal_ray.query import write_scores
    from hssal_ray.query.__main__ import main

    pool, _ = blob_pool(n=300, seed=7)
    pred = pool.probs.argmax(1)
    with_pred = tmp_path / "pred.parquet"  # no probs: the coarse level must come from the pred column
    write_scores(str(with_pred), pool.ids, pool.embeddings, scores=pool.scores, pred=pred)
    with_probs = tmp_path / "probs.parquet"
    write_scores(str(with_probs), pool.ids, pool.embeddings, pool.probs, pool.scores)
    bare = tmp_path / "bare.parquet"
    write_scores(str(bare), pool.ids, pool.embeddings, scores=pool.scores)
    outs = []
    for path in (with_pred, with_probs):
        argv = [str(path), "--budget", "12", "--backend", "torch", "--set", "query.coarse_by=predicted"]
        assert main(argv) == 0
        outs.append(capsys.readouterr().out.strip().splitlines()[1:])
    assert len(outs[0]) == 12 and outs[0] == outs[1]  # pred is the argmax of probs: the same batch
    assert main([str(bare), "--budget", "12", "--set", "query.coarse_by=predicted"]) == 2
    assert "'pred' or 'probs'" in capsys.readouterr().err
