"""Exact cosine k-nearest neighbours by tiled matrix products and top-k in torch (CPU or CUDA).

The neighbour search of the graph pseudo-labels (:mod:`hssal_ray.frozen.graph`) on a GPU: the rows
are L2-normalised once into one ``(n, d)`` matrix on the device, then each block of query rows is
multiplied with all of it (one ``(block, n)`` similarity tile) and ``torch.topk`` keeps the best
candidates. Memory: the normalised matrix plus one tile, whatever ``n``.

Precision. On CUDA the matrix and the products are float16 (tensor cores; the rows are unit
vectors, so nothing overflows). A float16 product is rounded to ~5e-4 near a cosine of 1, which
would shuffle close neighbours and their weights, so each row keeps ``k + rerank`` candidates from
the float16 tile and re-scores them in float32 before keeping the ``k`` best, in exact order with
exact similarities. Which rows become candidates is still decided on float16 similarities: a
neighbour within about 1e-3 (cosine) of the k-th may be swapped with it when more than ``rerank``
rows crowd that close (its weight ``cos ** 3`` then differs by under 0.3%). On CPU everything is
float32 and the result equals scikit-learn's brute-force search.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import scipy.sparse

__all__ = ["knn_cosine", "knn_affinity_torch", "affinity_from_neighbours", "compute_dtype_for"]

#: Bytes of one similarity tile (block rows x n) that :func:`knn_cosine` aims for by default.
TILE_BYTES = 1 << 30


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """float16 on CUDA (tensor-core products), float32 elsewhere (CPU float16 products are slow)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def _normalised(x: torch.Tensor | np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Unit rows of ``x`` as one ``(n, d)`` ``dtype`` matrix on ``device``, normalised in float32 blocks."""
    src = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if src.ndim != 2:
        raise ValueError(f"expected (n, d) features, got shape {tuple(src.shape)}")
    n, d = src.shape
    out = torch.empty((n, d), dtype=dtype, device=device)
    step = max(1, (64 << 20) // max(1, 4 * d))  # 64 MB float32 blocks
    for s in range(0, n, step):
        b = src[s : s + step].to(device=device, dtype=torch.float32, non_blocking=True)
        out[s : s + step] = torch.nn.functional.normalize(b, dim=1, eps=1e-12).to(dtype)
    return out


@torch.no_grad()
def knn_cosine(
    feats: torch.Tensor | np.ndarray,
    k: int,
    *,
    device: torch.device | str | None = None,
    block_rows: int | None = None,
    rerank: int = 8,
    compute_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of every row (each row itself excluded).

    Args:
        feats: ``(n, d)`` features (numpy or torch, any float dtype, any device); not normalised.
        k: Neighbours per row (at most ``n - 1`` are returned).
        device: Where to compute; default: ``feats``' device (CPU for numpy).
        block_rows: Query rows per similarity tile; default: a tile of about :data:`TILE_BYTES`.
        rerank: Extra candidates per row re-scored in float32 (only when ``compute_dtype`` is not
            float32).
        compute_dtype: dtype of the normalised matrix and the tiles; default
            :func:`compute_dtype_for` the device.

    Returns:
        ``(cos, idx)``: ``(n, k')`` float32 cosine similarities, descending per row, and ``(n, k')``
        int64 neighbour rows, ``k' = min(k, n - 1)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if device is None:
        device = feats.device if isinstance(feats, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    dtype = compute_dtype or compute_dtype_for(dev)
    n = int(feats.shape[0])
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    xn = _normalised(feats, dev, dtype)
    exact = dtype == torch.float32
    cand = min(n, k + 1 + (0 if exact else rerank))  # + 1: the row itself is masked, not dropped
    if block_rows is None:
        block_rows = max(1, TILE_BYTES // max(1, n * xn.element_size()))
    cos_out = torch.empty((n, k), dtype=torch.float32, device=dev)
    idx_out = torch.empty((n, k), dtype=torch.int64, device=dev)
    for s in range(0, n, block_rows):
        q = xn[s : s + block_rows]
        m = q.shape[0]
        sims = q @ xn.T  # (m, n) tile
        rows = torch.arange(m, device=dev)
        sims[rows, rows + s] = -float("inf")  # never the row itself, even among exact duplicates
        top = torch.topk(sims, cand, dim=1, sorted=exact)
        del sims
        if exact:  # sorted: the masked row itself can only be the last candidate
            cos_out[s : s + m], idx_out[s : s + m] = top.values[:, :k], top.indices[:, :k]
            continue
        # float32 re-scoring of the float16 candidates (unsorted), then the k best
        idx = top.indices
        exact_cos = torch.einsum("md,mcd->mc", q.float(), xn[idx].float())
        exact_cos = torch.where(idx == (rows + s)[:, None], -float("inf"), exact_cos)
        best = torch.topk(exact_cos, k, dim=1, sorted=True)
        cos_out[s : s + m] = best.values
        idx_out[s : s + m] = torch.gather(idx, 1, best.indices)
    return cos_out.cpu().numpy(), idx_out.cpu().numpy()


def affinity_from_neighbours(cos: np.ndarray, idx: np.ndarray) -> scipy.sparse.csr_matrix:
    """``D^-1/2 W D^-1/2`` with ``W_ij = max(cos_ij, 0) ** 3`` on the k-NN edges, symmetrised ``W + W.T``.

    The affinity of :func:`hssal_ray.frozen.graph.knn_affinity`, from ``(n, k)`` neighbour lists.
    """
    import scipy.sparse as sp

    n, k = idx.shape
    w = np.maximum(np.asarray(cos, dtype=np.float32), 0.0) ** 3
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    W = (W + W.T).tocsr()
    deg = np.asarray(W.sum(1)).ravel()
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    D = sp.diags(inv.astype(np.float32))
    return (D @ W @ D).tocsr()


def knn_affinity_torch(
    feats: torch.Tensor | np.ndarray, k: int, *, device: torch.device | str | None = None
) -> scipy.sparse.csr_matrix:
    """:func:`hssal_ray.frozen.graph.knn_affinity` with the neighbour search of :func:`knn_cosine`."""
    import scipy.sparse as sp

    n = int(feats.shape[0])
    if n < 2:
        return sp.csr_matrix((n, n), dtype=np.float32)
    cos, idx = knn_cosine(feats, k, device=device)
    return affinity_from_neighbours(cos, idx)
