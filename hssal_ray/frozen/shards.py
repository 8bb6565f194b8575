"""Row-range shards of the graph's nodes and the exact merge of per-shard neighbour lists (no Ray).

The sharded path (:mod:`hssal_ray.frozen.sharded`) splits the graph's ``n`` nodes into contiguous
row ranges (:func:`shard_bounds`); each shard holds only its own nodes' unit features. The k
nearest neighbours of a block of query nodes are found shard by shard (:func:`block_topk`, an
exact tiled search: each shard returns its own ``k`` best candidates, with global node indices)
and the per-shard lists are merged (:func:`merge_topk`). Any true neighbour of a query node is
among the ``k`` best of the shard that holds it, so the merge of the per-shard top-k lists is the
exact top-k over all nodes: the sharded graph is the single-machine exact graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["shard_bounds", "block_topk", "merge_topk", "TILE_BYTES"]

TILE_BYTES = 256 << 20
"""Bytes of one float32 similarity tile of :func:`block_topk`."""


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges covering ``range(n)``, sizes differing by at most 1.

    Fewer ranges when ``n < shards`` (no empty shard), one empty range when ``n == 0``.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    s = max(1, min(shards, n))
    edges = np.linspace(0, n, s + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def block_topk(
    q: np.ndarray, q_start: int, x: np.ndarray, x_start: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of ``x`` to each row of ``q`` (unit float32 rows; inner products).

    ``q`` holds nodes ``q_start..``, ``x`` nodes ``x_start..``; a node is never its own neighbour.
    Returns ``(cos, idx)`` ``(len(q), min(k, len(x)))``: similarities descending and global node
    indices; a row with fewer candidates than that (its own node excluded) is padded with
    ``-inf`` and index ``-1``.
    """
    import torch

    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    m, nx = len(qt), len(xt)
    kk = min(k, nx)
    cos = np.full((m, kk), -np.inf, np.float32)
    idx = np.full((m, kk), -1, np.int64)
    if kk == 0 or m == 0:
        return cos, idx
    block = max(1, TILE_BYTES // max(1, 4 * nx))
    for s in range(0, m, block):
        sims = qt[s : s + block] @ xt.T
        rows = torch.arange(len(sims))
        own = rows + (q_start + s - x_start)  # the query node's column in x, when x holds it
        inside = (own >= 0) & (own < nx)
        sims[rows[inside], own[inside]] = -float("inf")
        top = torch.topk(sims, kk, dim=1, sorted=True)
        c, i = top.values.numpy(), top.indices.numpy() + x_start
        i[~np.isfinite(c)] = -1
        cos[s : s + len(sims)], idx[s : s + len(sims)] = c, i
    return cos, idx


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row's candidates from every shard (:func:`block_topk` results).

    Candidates are ranked by similarity, descending (ties: the smaller node index first); padding
    (index ``-1``) ranks last. Returns ``(cos, idx)`` ``(m, min(k, candidates))``.
    """
    if not parts:
        raise ValueError("no shard results to merge")
    cos = np.concatenate([np.asarray(c, np.float32) for c, _ in parts], axis=1)
    idx = np.concatenate([np.asarray(i, np.int64) for _, i in parts], axis=1)
    kk = min(k, cos.shape[1])
    key_cos = np.where(idx < 0, -np.inf, cos)
    key_idx = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_idx, -key_cos), axis=-1)[:, :kk]  # last key first: -cos, then index
    return np.take_along_axis(cos, order, 1), np.take_along_axis(idx, order, 1)
