"""The neighbour search of the k-NN graph (:mod:`hssal_ray.frozen.graph`): exact, IVF, and its recall.

Exact: tiled matrix products and top-k (:func:`hssal_ray.frozen.knn_torch.knn_cosine`). IVF
(:func:`ivf_knn`): faiss k-means splits the rows into lists of about :data:`LIST_ROWS` rows (in a
:data:`PCA_DIM`-dimensional PCA projection), and the rows of each list are searched exactly (one
torch matrix product and top-k, in the full dimension) among about :data:`PROBE_ROWS` rows of the
lists nearest to them (the lists among the :data:`NEAR_LISTS` nearest of most of the list's rows):
``n * PROBE_ROWS * d`` instead of ``n^2 * d``. :func:`sampled_recall` measures an approximate
graph's recall@k against the exact search on sampled rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "exact_knn",
    "ivf_knn",
    "sampled_recall",
    "recall_at_k",
    "Features",
    "LIST_ROWS",
    "PROBE_ROWS",
    "PCA_DIM",
    "KMEANS_ITERS",
    "NEAR_LISTS",
    "SAMPLE_PER_LIST",
    "BLOCK_ROWS",
]

LIST_ROWS = 1024
"""Mean rows of an IVF list of :func:`ivf_knn`."""
PROBE_ROWS = 4096
"""Rows (of the nearest lists, its own first) that each IVF list's rows are searched among."""
PCA_DIM = 128
"""Dimension of the projection that the IVF lists are made in (the search itself is in full)."""
KMEANS_ITERS = 10
NEAR_LISTS = 3
"""Nearest lists of each row that vote for the lists its list is searched among."""
SAMPLE_PER_LIST = 64
"""Rows sampled per list to fit the projection and the k-means (at least 16,384, at most all)."""
BLOCK_ROWS = 16384
"""Rows per feature block when the search reads all rows."""
TILE_BYTES_CPU = 256 << 20
"""Bytes of one similarity tile of the exact search on a CPU."""

Features = Callable[[np.ndarray], np.ndarray]
"""``positions -> (len(positions), d)`` float32 unit rows (the graph's features of those nodes)."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_knn(feats: np.ndarray, k: int, device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of every row, exactly: ``(cos, idx)`` ``(n, k')``.

    ``k' = min(k, n - 1)``; ``cos`` float32 descending per row, ``idx`` int64 (the row itself excluded).
    """
    import torch

    from hssal_ray.frozen.knn_torch import knn_cosine

    x = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(feats))
    on_cpu = device is None or torch.device(device).type == "cpu"
    block = max(1, TILE_BYTES_CPU // max(1, 4 * len(x))) if on_cpu else None
    return knn_cosine(x, k, device=device, block_rows=block)


def ivf_knn(
    feats: Features,
    n: int,
    k: int,
    *,
    seed: int = 0,
    list_rows: int = LIST_ROWS,
    probe_rows: int = PROBE_ROWS,
    pca_dim: int = PCA_DIM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate cosine k-NN of ``n`` rows by IVF lists searched block by block (see the module doc).

    Args:
        feats: The rows' unit features by position (read twice, in blocks; see :data:`Features`).
        n: Rows.
        k: Neighbours per row.
        seed: Seeds the sample and the k-means.
        list_rows: Mean rows of a list.
        probe_rows: Rows each list's rows are searched among (whole nearest lists, its own first).
        pca_dim: Dimension the lists are made in.

    Returns:
        ``(cos, idx, order)``: ``(n, k')`` float32 similarities (descending) and int64 neighbours,
        ``k' = min(k, n - 1)``, and the positions sorted by list (a memory-friendly node order).
    """
    import torch

    from hssal_ray._faiss import import_faiss

    faiss = import_faiss()

    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64), np.arange(n)
    rng = np.random.default_rng([seed, 0x1F])
    nlist = max(1, min(n // 2, round(n / list_rows)))
    m = min(n, max(16_384, SAMPLE_PER_LIST * nlist))
    sample = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    xs = np.ascontiguousarray(feats(sample), dtype=np.float32)
    d = xs.shape[1]
    pca = None
    if d > pca_dim:
        pca = faiss.PCAMatrix(d, pca_dim)
        pca.train(xs)
        xs = pca.apply(xs)
    km = faiss.Kmeans(
        xs.shape[1],
        nlist,
        niter=KMEANS_ITERS,
        seed=int(seed) % (2**31),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(np.ascontiguousarray(xs))
    del xs
    near_lists = np.empty((n, min(NEAR_LISTS, nlist)), dtype=np.int32)
    for s in range(0, n, BLOCK_ROWS):  # pass 1: every row's nearest lists (the first is its own)
        pos = np.arange(s, min(n, s + BLOCK_ROWS))
        x = np.ascontiguousarray(feats(pos), dtype=np.float32)
        _, a = km.index.search(pca.apply(x) if pca is not None else x, near_lists.shape[1])
        near_lists[pos] = a
    lists = near_lists[:, 0].astype(np.int64)
    order = np.argsort(lists, kind="stable")
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    bounds = np.searchsorted(lists[order], np.arange(nlist + 1))
    z = np.empty((n, d), dtype=np.float16)  # pass 2: the rows in list order, float16 (2 bytes a value)
    for s in range(0, n, BLOCK_ROWS):
        pos = np.arange(s, min(n, s + BLOCK_ROWS))
        z[where[pos]] = torch.from_numpy(np.ascontiguousarray(feats(pos), dtype=np.float32)).half().numpy()
    rank = np.argsort(np.argsort(faiss.pairwise_distances(km.centroids, km.centroids), axis=1), axis=1)
    sizes = np.diff(bounds)
    cos_out = np.empty((n, k), dtype=np.float32)
    idx_out = np.empty((n, k), dtype=np.int64)
    for c in range(nlist):
        a, b = int(bounds[c]), int(bounds[c + 1])
        if a == b:
            continue
        # its own list first (self = its own position), then the lists that are among the nearest
        # of most of its rows (ties: by nearness of the centroids), until probe_rows rows
        votes = np.bincount(near_lists[order[a:b]].ravel(), minlength=nlist)
        ranked = np.lexsort((rank[c], -votes))
        probe, got = [c], int(sizes[c])
        for j in ranked:
            if got >= max(probe_rows, k + 1):
                break
            if j != c and sizes[j] > 0:
                probe.append(int(j))
                got += int(sizes[j])
        cand = np.concatenate([np.arange(bounds[j], bounds[j + 1]) for j in probe])
        q = torch.from_numpy(z[a:b]).float().numpy()
        xb = torch.from_numpy(z[cand] if len(probe) > 1 else z[a:b]).float().numpy()
        kk = min(k + 1, len(cand))
        # one product and top-k in torch (the exact search's product), not faiss.knn: on CPUs its
        # bundled OpenBLAS 0.3.15 does not know, faiss ran generic Prescott kernels, 6x slower than
        # torch (a 1,024 x 4,096 list at d=1280: 0.69 s against 0.11 s, one thread; the 1M build took
        # 674 CPU-s against 223); hssal_ray._faiss now loads the CPU's own kernels for faiss's k-means
        top = torch.topk(torch.from_numpy(q) @ torch.from_numpy(xb).T, kk, dim=1, sorted=True)
        sims, nn = top.values.numpy(), top.indices.numpy()
        own = nn == np.arange(b - a)[:, None]  # the row itself (list c is the first of the candidates)
        keep = np.argsort(own, axis=1, kind="stable")[:, : kk - 1]  # drops self, keeps the order
        sims = np.take_along_axis(sims, keep, 1)
        nn = np.take_along_axis(nn, keep, 1)
        if kk - 1 < k:  # fewer candidates than neighbours (tiny n): repeat the last one, weight 0
            pad = k - (kk - 1)
            sims = np.concatenate([sims, np.zeros((b - a, pad), np.float32)], 1)
            nn = np.concatenate([nn, np.repeat(nn[:, -1:], pad, 1)], 1)
        rows = order[a:b]
        cos_out[rows] = sims
        idx_out[rows] = order[cand[nn]]
    return cos_out, idx_out, order


def sampled_recall(feats: Features, n: int, idx: np.ndarray, *, rows: int = 100, seed: int = 0) -> float:
    """recall@k of neighbour lists ``idx`` ``(n, k)`` on ``rows`` sampled rows, against an exact search.

    One pass over the features in blocks (``rows x n`` similarities): what an approximate graph of
    real features achieves, measured where it is built.
    """
    k = idx.shape[1]
    if k == 0 or n < 2:
        return 1.0
    q = np.sort(np.random.default_rng([seed, 0x2E]).choice(n, min(rows, n), replace=False))
    zq = np.ascontiguousarray(feats(q), dtype=np.float32)
    best = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, n, BLOCK_ROWS):
        pos = np.arange(s, min(n, s + BLOCK_ROWS))
        sims = zq @ np.ascontiguousarray(feats(pos), dtype=np.float32).T
        sims[q[:, None] == pos[None, :]] = -np.inf  # not the row itself
        allv = np.concatenate([best, sims], 1)
        alli = np.concatenate([best_i, np.broadcast_to(pos, sims.shape)], 1)
        top = np.argpartition(-allv, min(k, allv.shape[1] - 1), axis=1)[:, :k]
        best, best_i = np.take_along_axis(allv, top, 1), np.take_along_axis(alli, top, 1)
    return recall_at_k(idx[q], best_i)


def recall_at_k(idx: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of the reference neighbours ``ref`` ``(n, k)`` that ``idx`` ``(n, k)`` found."""
    if ref.size == 0:
        return 1.0
    hit = sum(len(np.intersect1d(a, b, assume_unique=False)) for a, b in zip(idx, ref, strict=True))
    return hit / ref.size
