"""The contract every registered query strategy must honour (a shared suite, parametrised)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from hssal_ray.errors import BudgetError, ConfigError, DataError, EmptyPoolError
from hssal_ray.query import Pool, available_strategies, get_strategy_class, strategy_from_config

from ._data import blob_pool

VARIANTS = [(name, {}) for name in available_strategies()] + [
    ("hal", {"fine_method": "spectral"}),
    ("hal", {"pick": "typical"}),
    ("hal", {"ssl_aware": True, "uncertainty": "entropy", "kmeans_backend": "torch"}),
    ("hal_flat", {"pick": "typical", "fine_method": "spectral"}),
]
IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw in VARIANTS]


def make(name: str, seed: int = 0, **kw: object):
    return strategy_from_config(types.SimpleNamespace(strategy=name, **kw), random_state=seed)


@pytest.fixture(scope="module")
def pool() -> Pool:
    p, _ = blob_pool(n=300)
    p.exclude = np.zeros(300, dtype=bool)
    p.exclude[::7] = True
    return p


def _copy(pool: Pool, **changes: object) -> Pool:
    kw = dict(
        ids=pool.ids,
        embeddings=pool.embeddings,
        probs=pool.probs,
        scores=dict(pool.scores),
        confident=pool.confident,
        exclude=pool.exclude,
    )
    kw.update(changes)
    return Pool(**kw)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_returns_budget_unique_available_rows(name: str, kw: dict, pool: Pool) -> None:
    s = make(name, **kw)
    picks = s.select(pool, 25)
    assert picks.dtype == np.int64 and picks.shape == (25,)
    assert np.unique(picks).size == 25
    assert not pool.exclude[picks].any()
    assert ((picks >= 0) & (picks < len(pool))).all()
    assert len(s.info_["pick_coarse_cluster"]) == 25


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_deterministic_under_random_state(name: str, kw: dict, pool: Pool) -> None:
    a = make(name, seed=3, **kw).select(pool, 20)
    b = make(name, seed=3, **kw).select(pool, 20)
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ_for_random(pool: Pool) -> None:
    assert not np.array_equal(
        make("random", seed=1).select(pool, 20), make("random", seed=2).select(pool, 20)
    )


@pytest.mark.parametrize("name", available_strategies())
def test_budget_errors_name_both_numbers(name: str, pool: Pool) -> None:
    s = make(name)
    avail = int((~pool.exclude).sum())
    with pytest.raises(BudgetError, match=f"budget {avail + 1} .*{avail} available"):
        s.select(pool, avail + 1)
    for bad in (0, -3):
        with pytest.raises(BudgetError, match=f"budget {bad} "):
            s.select(pool, bad)
    with pytest.raises(BudgetError, match="int"):
        s.select(pool, 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", available_strategies())
def test_empty_and_fully_excluded_pool(name: str, pool: Pool) -> None:
    s = make(name)
    empty = Pool(
        ids=np.zeros(0, dtype=object),
        embeddings=np.zeros((0, 16), np.float16),
        probs=np.zeros((0, 5), np.float32),
        scores={k: v[:0] for k, v in pool.scores.items()},
    )
    with pytest.raises(EmptyPoolError, match="empty"):
        s.select(empty, 1)
    with pytest.raises(EmptyPoolError, match="all 300 rows"):
        s.select(_copy(pool, exclude=np.ones(300, dtype=bool)), 1)


@pytest.mark.parametrize("name", available_strategies())
def test_nan_rows_raise_data_error(name: str, pool: Pool) -> None:
    s = make(name)
    scores = dict(pool.scores)
    for col in scores:
        scores[col] = scores[col].copy()
        scores[col][[11, 12]] = np.nan
    with pytest.raises(DataError, match=r"NaN or inf in 2 rows: 11 \(s00011\), 12"):
        s.select(_copy(pool, scores=scores), 5)
    if get_strategy_class(name).requires_embeddings:
        emb = pool.embeddings.copy()
        emb[40, 3] = np.inf
        with pytest.raises(DataError, match=r"40.*s00040"):
            s.select(_copy(pool, embeddings=emb), 5)


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_duplicate_points_and_budget_above_distinct_points(name: str, kw: dict) -> None:
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((4, 8)).astype(np.float32)
    emb = np.repeat(distinct, 15, axis=0)  # 60 rows, 4 distinct points
    probs = np.repeat(rng.dirichlet(np.ones(3), size=4), 15, axis=0).astype(np.float32)
    from hssal_ray.query import compute_all

    dup = Pool(
        ids=np.array([f"d{i}" for i in range(60)], dtype=object),
        embeddings=emb,
        probs=probs,
        scores=compute_all(probs, emb),
        confident=np.zeros(60, bool),
    )
    picks = make(name, **kw).select(dup, 12)
    assert np.unique(picks).size == 12
    assert make(name, **kw).select(dup, 60).size == 60


@pytest.mark.parametrize("name", available_strategies())
def test_repr_and_params(name: str) -> None:
    s = make(name, seed=5)
    r = repr(s)
    assert r.startswith(type(s).__name__ + "(") and "random_state=5" in r
    assert s.get_params()["random_state"] == 5
    assert not any(k.endswith("_") for k in vars(s))  # nothing learned before select


def test_embedding_free_strategies_need_no_embeddings(pool: Pool) -> None:
    for name in ("random", "entropy", "margin"):
        assert not get_strategy_class(name).requires_embeddings
        assert make(name).select(_copy(pool, embeddings=None), 10).size == 10
    with pytest.raises(DataError, match="embeddings"):
        make("hal").select(_copy(pool, embeddings=None), 10)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="valid: badge, coreset, entropy, hal"):
        make("kmeans")
    with pytest.raises(ConfigError, match="fine_method='dbscan'"):
        make("hal", fine_method="dbscan")
    with pytest.raises(ConfigError, match="does not take"):
        strategy_from_config(types.SimpleNamespace(strategy="random"), 0, map_fn=map)
