"""Scoring outputs without Ray: the scores contract round trip and the classification metrics."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from hssal_ray.config import load_config
from hssal_ray.query import load_pool, strategy_from_config
from hssal_ray.rounds import classification_metrics, scores_table


def _outputs(n: int = 40, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    logits = rng.normal(size=(n, c)) * 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    strong = np.roll(probs, 1, axis=0)
    return np.array([f"id{i}" for i in range(n)], dtype=object), emb, probs.astype(np.float32), strong


def test_scores_table_to_load_pool_round_trip_keeps_confident(tmp_path) -> None:
    ids, emb, probs, strong = _outputs()
    t = scores_table(ids, emb, probs, strong, p_cutoff=0.6)
    pq.write_table(t, tmp_path / "s.parquet")
    pool = load_pool(str(tmp_path / "s.parquet"))
    want = (probs.max(1) >= 0.6) & (strong.max(1) >= 0.6) & (probs.argmax(1) == strong.argmax(1))
    assert pool.confident is not None, "query.ssl_aware would silently do nothing"
    np.testing.assert_array_equal(pool.confident, want)
    np.testing.assert_array_equal(pool.ids, ids)
    np.testing.assert_allclose(pool.probs, probs, rtol=1e-6)
    np.testing.assert_array_equal(pool.pred, probs.argmax(1))
    assert {"u_badge", "u_entropy", "u_margin", "u_disagreement"} <= set(pool.scores)


def test_ssl_aware_hal_changes_the_batch(tmp_path) -> None:
    """With confident rows present, ssl_aware HAL prefers the others (it read a column never written)."""
    ids, emb, probs, _ = _outputs(200, seed=1)
    t = scores_table(ids, emb, probs, probs, p_cutoff=0.5)
    pq.write_table(t, tmp_path / "s.parquet")
    pool = load_pool(str(tmp_path / "s.parquet"))
    assert 0 < pool.confident.sum() < 200
    picks = {}
    for aware in (False, True):
        cfg = load_config(None, [f"query.ssl_aware={str(aware).lower()}", "query.kmeans_backend=sklearn"])
        picks[aware] = strategy_from_config(cfg.query, random_state=0).select(pool, 10)
    assert pool.confident[picks[True]].sum() < pool.confident[picks[False]].sum()


def test_classification_metrics_reports_both_weights() -> None:
    y = np.array([0, 0, 1, 1, 2])
    m = classification_metrics(y, np.array([0, 0, 1, 0, 2]), 3, other=np.array([0, 1, 1, 1, 2]))
    assert m["test_accuracy"] == m["test_accuracy_ema"] == 0.8
    assert m["test_accuracy_online"] == 0.8
    assert m["test_per_class_accuracy"] == {0: 1.0, 1: 0.5, 2: 1.0}
    m = classification_metrics(y, y, 3, other=np.zeros(5, int), eval_model="online")
    assert m["test_accuracy_online"] == 1.0 and m["test_accuracy_ema"] == 0.4
