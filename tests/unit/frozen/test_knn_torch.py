"""The tiled torch k-NN (``hssal_ray.frozen.knn_torch``): exact on CPU, float16 tiles re-scored in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from hssal_ray.frozen.graph import knn_affinity
from hssal_ray.frozen.knn_torch import compute_dtype_for, knn_affinity_torch, knn_cosine


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_rows", [37, None])
def test_float32_search_equals_sklearn_brute_force(block_rows: int | None) -> None:
    """Query blocks that do not divide n, and one tile for all: the same neighbours as sklearn."""
    x = np.random.default_rng(1).normal(size=(300, 24)).astype(np.float32)
    k = 7
    cos, idx = knn_cosine(torch.from_numpy(x * 3.0), k, block_rows=block_rows)  # unnormalised input
    dist, ref = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(_unit(x)).kneighbors(_unit(x))
    assert cos.dtype == np.float32 and idx.dtype == np.int64 and idx.shape == (300, k)
    np.testing.assert_array_equal(idx, ref[:, 1:])
    np.testing.assert_allclose(cos, 1.0 - dist[:, 1:] ** 2 / 2.0, atol=1e-5)
    assert np.all(np.diff(cos, axis=1) <= 0)


def test_float16_tiles_are_rescored_in_float32() -> None:
    """The GPU arithmetic on CPU: tight clusters whose mates differ by less than float16's rounding.

    Every row has 12 mates within 1e-3 (cosine). The float16 tile cannot order them; the float32
    re-scoring of ``k + rerank`` candidates does (the reference: float64 on the same float16 unit
    vectors). Without re-scoring the neighbours and their similarities come out wrong.
    """
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(30, 64))
    x = np.repeat(centres, 13, axis=0) + 0.03 * rng.normal(size=(30 * 13, 64))
    x = x.astype(np.float32)
    xh = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).half().double().numpy()
    sims = xh @ xh.T
    np.fill_diagonal(sims, -np.inf)
    k = 5
    best = -np.sort(-sims, axis=1)[:, :k]  # the k best similarities of each row, descending
    cos, idx = knn_cosine(x, k, compute_dtype=torch.float16, rerank=8)
    # the right neighbours (up to float32 rounding: mates 1e-8 apart may swap) with their similarities
    np.testing.assert_allclose(np.take_along_axis(sims, idx, 1), best, atol=1e-6)
    np.testing.assert_allclose(cos, best, atol=1e-6)
    cos0, idx0 = knn_cosine(x, k, compute_dtype=torch.float16, rerank=0)
    assert (np.abs(np.take_along_axis(sims, idx0, 1) - best).max(1) > 1e-5).mean() > 0.5
    assert (np.abs(cos0 - best).max(1) > 1e-5).mean() > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_row_is_never_its_own_neighbour_among_duplicates(dtype: torch.dtype) -> None:
    x = np.repeat(np.random.default_rng(3).normal(size=(20, 8)), 3, axis=0).astype(np.float32)
    _, idx = knn_cosine(x, 4, compute_dtype=dtype, block_rows=16)
    assert not (idx == np.arange(len(x))[:, None]).any()
    twins = idx[:, :2] // 3 == (np.arange(len(x)) // 3)[:, None]  # the two copies come first
    assert twins.all()


def test_affinity_equals_the_sklearn_graph() -> None:
    x = np.random.default_rng(4).normal(size=(150, 16)).astype(np.float16)
    a = knn_affinity_torch(x, 6).toarray()
    b = knn_affinity(x, 6).toarray()
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert knn_affinity_torch(x[:1], 6).shape == (1, 1)
    cos, idx = knn_cosine(x[:3], 10)
    assert idx.shape == (3, 2)  # at most n - 1 neighbours


def test_compute_dtype_per_device() -> None:
    assert compute_dtype_for(torch.device("cuda")) == torch.float16
    assert compute_dtype_for(torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="k must be"):
        knn_cosine(np.zeros((4, 2), np.float32), 0)
