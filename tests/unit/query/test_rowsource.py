"""Embeddings read on demand (:class:`hssal_ray.query.rowsource.RowSource`): indexing, streaming, and
the same batches as the whole array for every strategy."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hssal_ray.errors import DataError
from hssal_ray.query import strategy_from_config
from hssal_ray.query.base import nonfinite_rows
from hssal_ray.query.kmeans_ops import assign_chunked
from hssal_ray.query.rowsource import RowSource, is_row_source
from tests.unit.query._data import GLOBAL_HAL, blob_pool


class ArrayRows(RowSource):
    """An array behind the interface, counting the rows it is asked for."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.shape = a.shape
        self.dtype = a.dtype
        self.read = 0

    def rows(self, idx: np.ndarray) -> np.ndarray:
        self.read += len(idx)
        return self.a[idx]


def test_indexing_reads_the_rows_asked_for() -> None:
    a = np.arange(40, dtype=np.float16).reshape(10, 4)
    src = ArrayRows(a)
    assert is_row_source(src) and not is_row_source(a)
    assert (len(src), src.ndim, src.nbytes) == (10, 2, a.nbytes)
    idx = np.array([7, 2, 2, -1])
    np.testing.assert_array_equal(src[idx], a[idx])
    np.testing.assert_array_equal(src[2:9:3], a[2:9:3])
    np.testing.assert_array_equal(src[torch.tensor([1, 0])], a[[1, 0]])
    mask = np.zeros(10, dtype=bool)
    mask[[0, 5]] = True
    np.testing.assert_array_equal(src[mask], a[mask])
    np.testing.assert_array_equal(src[np.int64(4)], a[4])
    assert src.read == 4 + 3 + 2 + 2 + 1
    np.testing.assert_array_equal(np.asarray(src), a)
    np.testing.assert_array_equal(np.concatenate([r for _, r in src.blocks(3)]), a)
    assert [s for s, _ in src.blocks(3)] == [0, 3, 6, 9]
    for bad in (np.array([10]), np.array([-11])):
        with pytest.raises(IndexError, match="out of range"):
            src[bad]
    with pytest.raises(IndexError):
        src[np.array([0.5])]
    with pytest.raises(IndexError, match="boolean"):
        src[np.ones(3, dtype=bool)]


def test_streamed_assignment_and_nan_check_match_the_array() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5000, 24)).astype(np.float16)
    a[[17, 4321]] = np.nan
    C = rng.standard_normal((9, 24)).astype(np.float32)
    src = ArrayRows(a)
    la, da = assign_chunked(a, C, chunk_size=1000, return_distances=True)
    lb, db = assign_chunked(src, C, chunk_size=1000, return_distances=True)
    assert np.array_equal(la, lb) and np.array_equal(da, db, equal_nan=True)
    assert la[17] == -1 and la[4321] == -1
    np.testing.assert_array_equal(nonfinite_rows(src, chunk_size=700), [17, 4321])
    assert src.read == 2 * 5000  # two streamed passes, never the whole matrix at once


@pytest.mark.parametrize(
    "query",
    [
        {**GLOBAL_HAL, "strategy": "hal"},
        {**GLOBAL_HAL, "strategy": "hal_flat"},
        {"strategy": "hal", "uncertainty": "margin", "pick": "typical", "boundary_check": True},
        {"strategy": "margin"},
        {"strategy": "typiclust"},
        {"strategy": "badge"},
        {"strategy": "coreset"},
    ],
    ids=["hal", "hal_flat", "hal_typical_boundary", "margin", "typiclust", "badge", "coreset"],
)
def test_every_strategy_picks_the_same_batch_from_a_row_source(query: dict) -> None:
    pool, _ = blob_pool(n=700)
    pool.exclude = np.zeros(len(pool), dtype=bool)
    pool.exclude[::5] = True
    cfg = SimpleNamespace(**{k: v for k, v in query.items() if k != "random_state"})
    ref = strategy_from_config(cfg, random_state=11).select(pool, 30)
    src = ArrayRows(pool.embeddings)
    lazy = dataclasses.replace(pool, embeddings=src)
    got = strategy_from_config(cfg, random_state=11).select(lazy, 30)
    np.testing.assert_array_equal(got, ref)
    if query["strategy"] == "margin":
        assert src.read == 0  # an uncertainty baseline reads no embedding
    pool.exclude = None  # every row available: strategies that take the whole matrix read it whole
    ref = strategy_from_config(cfg, random_state=12).select(pool, 30)
    got = strategy_from_config(cfg, random_state=12).select(dataclasses.replace(pool, embeddings=src), 30)
    np.testing.assert_array_equal(got, ref)


def test_a_row_source_with_nan_rows_is_refused_by_name() -> None:
    pool, _ = blob_pool(n=300)
    emb = pool.embeddings.copy()
    emb[42] = np.nan
    cfg = SimpleNamespace(**{k: v for k, v in GLOBAL_HAL.items() if k != "random_state"})
    with pytest.raises(DataError, match="s00042"):
        strategy_from_config(cfg, random_state=0).select(
            dataclasses.replace(pool, embeddings=ArrayRows(emb)), 10
        )
