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

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["shard_bounds", "block_topk", "merge_topk", "gpus_per_shard", "exact_float32", "TILE_BYTES"]

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
    q: np.ndarray, q_start: int, x: Any, x_start: int, k: int, device: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of ``x`` to each row of ``q`` (unit float32 rows; inner products).

    ``q`` holds nodes ``q_start..``, ``x`` nodes ``x_start..``; a node is never its own neighbour.
    ``x`` may be a float32 torch tensor already on ``device`` (a GPU shard keeps its rows there).
    ``device``: where the products run (None: the CPU); on CUDA in float32 with TF32 off, so the
    search stays exact as on the CPU. Returns ``(cos, idx)`` ``(len(q), min(k, len(x)))`` on the
    host: similarities descending and global node indices; a row with fewer candidates than that
    (its own node excluded) is padded with ``-inf`` and index ``-1``.
    """
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(dev)
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xt = xt.to(device=dev, dtype=torch.float32)
    m, nx = len(qt), len(xt)
    kk = min(k, nx)
    cos = np.full((m, kk), -np.inf, np.float32)
    idx = np.full((m, kk), -1, np.int64)
    if kk == 0 or m == 0:
        return cos, idx
    block = max(1, TILE_BYTES // max(1, 4 * nx))
    with exact_float32(dev):
        for s in range(0, m, block):
            sims = qt[s : s + block] @ xt.T
            rows = torch.arange(len(sims), device=dev)
            own = rows + (q_start + s - x_start)  # the query node's column in x, when x holds it
            inside = (own >= 0) & (own < nx)
            sims[rows[inside], own[inside]] = -float("inf")
            top = torch.topk(sims, kk, dim=1, sorted=True)
            c, i = top.values.cpu().numpy(), top.indices.cpu().numpy() + x_start
            i[~np.isfinite(c)] = -1
            cos[s : s + len(sims)], idx[s : s + len(sims)] = c, i
    return cos, idx


@contextlib.contextmanager
def exact_float32(dev: Any) -> Iterator[None]:
    """float32 products on CUDA without TF32 (10-bit mantissas would reorder close neighbours).

    ``dev``: a ``torch.device``; on any other device type this does nothing.
    """
    import torch

    if dev.type != "cuda":
        yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def gpus_per_shard(cluster_gpus: float, shards: int) -> float:
    """The GPU share each of ``shards`` graph actors asks Ray for when ``resources.use_gpu``.

    One GPU each while the cluster has enough, else an equal share (Ray's fractional GPUs, rounded
    down to its 1e-4 granularity) so every shard is placed at once instead of waiting forever for
    a GPU that does not exist.

    Raises:
        ConfigError: the cluster has no GPU.
    """
    from hssal_ray.errors import ConfigError

    if cluster_gpus <= 0:
        raise ConfigError(
            f"resources.use_gpu with resources.store_shards={shards}: the Ray cluster has no GPU; "
            "unset resources.use_gpu to build the graph on CPU actors"
        )
    return min(1.0, math.floor(cluster_gpus / shards * 1e4) / 1e4)


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
