"""HAL's coarse allocation weighed by how mixed the oracle's labels in each cluster are (alloc_purity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hssal_ray.config import config_from_dict, load_config
from hssal_ray.errors import DataError
from hssal_ray.loop.query_batch import run_query
from hssal_ray.loop.run_config import unused_keys
from hssal_ray.query import HierarchicalQuery, write_scores
from hssal_ray.query.__main__ import main
from hssal_ray.query.hierarchical import label_impurity
from hssal_ray.query.scores_io import pool_labels, read_labeled_classes

from ._data import GLOBAL_HAL, blob_pool


def test_label_impurity_known_answer_and_shrinkage() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 1, 2])
    classes = np.array([3, 3, 3, 1, 2, 1, 0])
    rbar = 1 / 7  # one minority label in 7: the prior is one minority label in 1 / rbar = 7 rows
    want = [1 / 10 / rbar, 2 / 10 / rbar, 1 / 8 / rbar, 1.0]  # cluster 3 holds no label: the prior
    np.testing.assert_allclose(label_impurity(clusters, classes, 4), want)
    pure = label_impurity(clusters, np.array([3, 3, 3, 1, 1, 1, 0]), 3)  # no minority label anywhere
    assert pure.tolist() == [1.0, 1.0, 1.0]
    assert label_impurity(np.zeros(0, np.int64), np.zeros(0, np.int64), 2).tolist() == [1.0, 1.0]
    # a tie counts one class as the majority: 2 + 2 labels -> 2 outside it
    tie = label_impurity(np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2, 2, 2]), 2)
    assert tie[0] > 1.0 > tie[1]


KW = GLOBAL_HAL


def _labeled_pool(seed: int = 3):
    """A blob pool with 10 labeled rows in every coarse cluster of plain HAL, each cluster one class."""
    pool, _ = blob_pool(n=800, n_blobs=6, seed=seed, fp16=False)
    plain = HierarchicalQuery(**KW)
    plain.select(pool, 30)
    coarse = plain.coarse_labels_
    exclude = np.zeros(len(pool), bool)
    for k in range(6):
        exclude[np.flatnonzero(coarse == k)[:10]] = True
    pool.exclude = exclude
    pool.labels = np.where(exclude, coarse, -1)
    plain = HierarchicalQuery(**KW)
    plain.select(pool, 30)  # the same coarse level with the labeled rows left out of the selection
    b0 = plain.info_["budget_per_cluster"]
    target = int(np.flatnonzero(b0 > 0)[np.argmin(b0[b0 > 0])])
    return pool, plain, target


def test_budget_moves_to_the_coarse_cluster_whose_labels_are_mixed() -> None:
    pool, plain, target = _labeled_pool()
    coarse = plain.coarse_labels_
    rows = np.flatnonzero(pool.exclude & (coarse == target))
    pool.labels[rows[:5]] = 99  # half of its labels say another class; every other cluster stays pure
    other = np.flatnonzero(pool.exclude & (coarse == (target + 1) % 6))
    pool.labels[other[:1]] = 98  # one minority label elsewhere
    mixed = HierarchicalQuery(alloc_purity=True, **KW)
    picks = mixed.select(pool, 30)
    np.testing.assert_array_equal(mixed.coarse_labels_, coarse)  # the same coarse level, only the weights
    imp = mixed.info_["cluster_impurity"]
    assert imp[target] == imp.max() > 1.0 and plain.info_["cluster_impurity"] is None
    b = mixed.info_["budget_per_cluster"]
    assert b[target] > plain.info_["budget_per_cluster"][target] and b.sum() == 30
    assert (coarse[picks] == target).sum() == b[target] and not pool.exclude[picks].any()


def test_pure_labels_change_nothing_and_missing_classes_are_a_clear_error() -> None:
    pool, plain, _ = _labeled_pool(seed=5)
    base = HierarchicalQuery(**KW).select(pool, 30)
    np.testing.assert_array_equal(HierarchicalQuery(alloc_purity=True, **KW).select(pool, 30), base)
    pool.labels = None
    with pytest.raises(DataError, match="labeled rows' classes"):
        HierarchicalQuery(alloc_purity=True, **KW).select(pool, 30)
    pool.labels = np.full(len(pool), -1)
    with pytest.raises(DataError, match="without a class"):
        HierarchicalQuery(alloc_purity=True, **KW).select(pool, 30)
    pool.exclude = None  # nothing labeled yet (round 0): nothing to weigh by, no error
    assert HierarchicalQuery(alloc_purity=True, **KW).select(pool, 30).size == 30
    with pytest.raises(Exception, match="alloc_purity"):
        HierarchicalQuery(alloc_purity="mass")._check_params()


def test_pool_labels_and_the_loops_query_pass_the_classes(tmp_path: Path) -> None:
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    got = pool_labels(ids, np.array([True, False, True, False]), {"a": 2, "c": 0, "z": 1})
    assert got.tolist() == [2, -1, 0, -1]
    with pytest.raises(DataError, match=r"without a class: \['c'\]"):
        pool_labels(ids, np.array([True, False, True, False]), {"a": 2})

    pool, _ = blob_pool(n=400)
    path = str(tmp_path / "scores")
    write_scores(path, pool.ids, pool.embeddings, pool.probs, pool.scores)
    cfg = config_from_dict(
        {
            "seed": 3,
            "data": {"root": str(tmp_path)},
            "query": {"strategy": "hal", "budget": 20, "uncertainty": "margin", "alloc_purity": True},
        }
    )
    classes = {str(s): i % 3 for i, s in enumerate(pool.ids[::4])}
    ids_, _, _, _ = run_query(cfg, path, 20, classes, round_idx=1)  # id -> class: the classes reach HAL
    assert len(set(ids_)) == 20 and not set(ids_) & set(classes)
    with pytest.raises(DataError, match="labeled rows' classes"):  # ids alone: HAL cannot weigh
        run_query(cfg, path, 20, set(classes), round_idx=1)
    # the flat variant has one cluster: the option is not part of its run identity
    flat = load_config(None, ["query.strategy=hal_flat", "query.alloc_purity=true"])
    assert "query.alloc_purity" in unused_keys(flat)
    assert "query.alloc_purity" not in unused_keys(load_config(None, ["query.alloc_purity=true"]))


def test_cli_reads_the_label_column_of_exclude(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool, _ = blob_pool(n=300, seed=2)
    scores = tmp_path / "scores.parquet"
    write_scores(str(scores), pool.ids, pool.embeddings, pool.probs, pool.scores)
    labeled = tmp_path / "labels.csv"
    labeled.write_text("sample_id,label\n" + "".join(f"s{i:05d},{i % 4}\n" for i in range(0, 300, 10)))
    argv = [str(scores), "--budget", "9", "--exclude", str(labeled), "--backend", "torch"]
    assert main([*argv, "--set", "query.alloc_purity=true"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[1:]
    labeled_ids = {f"s{i:05d}" for i in range(0, 300, 10)}
    assert len(out) == 9 and not {line.split(",")[0] for line in out} & labeled_ids
    assert read_labeled_classes(str(labeled))["s00010"] == 2
    ids_only = tmp_path / "ids.csv"
    ids_only.write_text("sample_id\ns00000\n")
    purity = ["--set", "query.alloc_purity=true"]
    assert main([str(scores), "--budget", "3", "--exclude", str(ids_only), *purity]) == 2
    assert "no 'label' column" in capsys.readouterr().err
    assert main([str(scores), "--budget", "3", "--exclude", str(ids_only)]) == 0  # ids suffice without it
