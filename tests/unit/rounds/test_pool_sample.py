"""``query.pool_sample``: which rows the score stage scores (plain numpy, no Ray)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.rounds import pool_sample_rows


def _mask(n: int = 1000, labeled: int = 50, seed: int = 0) -> np.ndarray:
    m = np.zeros(n, bool)
    m[np.random.default_rng(seed).choice(n, labeled, replace=False)] = True
    return m


def test_sample_keeps_every_labeled_row_and_draws_the_size_asked() -> None:
    mask = _mask()
    rows = pool_sample_rows(mask, 200, budget=20, seed=7, round_idx=1)
    assert rows is not None and np.all(np.diff(rows) > 0)  # sorted, no row twice
    assert set(np.flatnonzero(mask)) <= set(rows.tolist())
    assert (~mask[rows]).sum() == 200 and len(rows) == 250


def test_sample_is_seeded_by_run_and_round() -> None:
    mask = _mask()
    a = pool_sample_rows(mask, 200, 20, seed=7, round_idx=1)
    assert np.array_equal(a, pool_sample_rows(mask, 200, 20, seed=7, round_idx=1))  # a rerun draws the same
    assert not np.array_equal(a, pool_sample_rows(mask, 200, 20, seed=7, round_idx=2))
    assert not np.array_equal(a, pool_sample_rows(mask, 200, 20, seed=8, round_idx=1))


def test_sample_is_uniform_over_the_unlabeled_rows() -> None:
    mask = _mask(n=400, labeled=0)
    hits = np.zeros(400)
    for r in range(400):
        hits[pool_sample_rows(mask, 100, 10, seed=1, round_idx=r)] += 1
    # each row is drawn with probability 1/4 a round: 100 expected of 400, binomial sd ~8.7
    assert abs(hits.mean() - 100) < 1e-9 and hits.min() > 60 and hits.max() < 140


def test_no_sample_when_it_would_hold_the_whole_pool() -> None:
    mask = _mask(n=100, labeled=10)
    assert pool_sample_rows(mask, 0, 5, seed=0, round_idx=1) is None
    assert pool_sample_rows(mask, 90, 5, seed=0, round_idx=1) is None
    assert pool_sample_rows(mask, 500, 5, seed=0, round_idx=1) is None
    assert len(pool_sample_rows(mask, 89, 5, seed=0, round_idx=1)) == 99


def test_a_sample_below_the_batch_is_an_error_and_below_the_candidates_a_warning(caplog) -> None:
    mask = _mask()
    with pytest.raises(ConfigError, match=r"19 unlabeled rows .* fewer than the 20 this query"):
        pool_sample_rows(mask, 19, budget=20, seed=0, round_idx=1)
    caplog.set_level(logging.WARNING, logger="hssal_ray.rounds.policy")
    pool_sample_rows(mask, 50, budget=20, seed=0, round_idx=1, candidate_ratio=3.0)
    assert "fewer than the query's 3 x 20 candidates" in caplog.text
    caplog.clear()
    pool_sample_rows(mask, 60, budget=20, seed=0, round_idx=1, candidate_ratio=3.0)
    assert not caplog.text


def test_config_takes_a_count_or_a_fraction() -> None:
    assert load_config(None, []).query.pool_sample == 0
    assert load_config(None, ["query.pool_sample=5000"]).query.pool_sample == 5000
    assert load_config(None, ["query.pool_sample=0.1"]).query.pool_sample == 0.1
    for bad in ("-1", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match="query.pool_sample"):
            load_config(None, [f"query.pool_sample={bad}"])
