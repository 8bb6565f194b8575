"""The sharded neighbour search's math: per-shard top-k lists merged = the exact single-machine graph."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.frozen.knn_torch import knn_cosine
from hssal_ray.frozen.shards import block_topk, merge_topk, shard_bounds


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shard_bounds_cover_every_row_once() -> None:
    for n, s in [(10, 3), (7, 7), (3, 5), (1000, 4), (0, 2)]:
        b = shard_bounds(n, s)
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(a[1] == c[0] for a, c in zip(b[:-1], b[1:], strict=True))
        sizes = [e - s for s, e in b]
        assert max(sizes) - min(sizes) <= 1 and (n == 0 or min(sizes) >= 1)
    with pytest.raises(ValueError):
        shard_bounds(5, 0)


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_merged_shard_topk_equals_exact_search(shards: int) -> None:
    z = _unit(503, 24)
    k = 7
    ref_cos, ref_idx = knn_cosine(z, k)
    cos = np.empty_like(ref_cos)
    idx = np.empty_like(ref_idx)
    bounds = shard_bounds(len(z), shards)
    for qs, qe in bounds:
        parts = [block_topk(z[qs:qe], qs, z[xs:xe], xs, k) for xs, xe in bounds]
        cos[qs:qe], idx[qs:qe] = merge_topk(parts, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-6)
    assert not (idx == np.arange(len(z))[:, None]).any()  # never a node's own neighbour


def test_small_shards_are_padded_and_padding_ranks_last() -> None:
    z = _unit(6, 4, seed=1)
    c, i = block_topk(z[:1], 0, z[:2], 0, 5)  # a shard of 2 nodes, one of them the query itself
    assert c.shape == (1, 2) and i[0, 1] == -1 and np.isneginf(c[0, 1]) and i[0, 0] == 1
    parts = [(c, i), block_topk(z[:1], 0, z[2:], 2, 5)]
    mc, mi = merge_topk(parts, 5)
    ref_c, ref_i = knn_cosine(z, 5)
    np.testing.assert_array_equal(mi, ref_i[:1])
    np.testing.assert_allclose(mc, ref_c[:1], atol=1e-6)


def test_merge_breaks_ties_by_node_index() -> None:
    cos = np.array([[0.5, 0.5]], np.float32)
    mc, mi = merge_topk([(cos[:, :1], np.array([[9]])), (cos[:, 1:], np.array([[4]]))], 2)
    assert mi.tolist() == [[4, 9]] and mc.tolist() == [[0.5, 0.5]]
