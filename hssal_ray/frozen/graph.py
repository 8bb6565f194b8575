"""Graph-smoothed pseudo-labels for the frozen head (``ssl.pseudo_labels=graph``): numpy/scipy/sklearn.

A supervised teacher head predicts the labeled set and the pool; the predictions are propagated
over the cosine k-nearest-neighbour graph of the samples' features (Zhou et al. 2004, "Learning
with local and global consistency"; the affinity ``max(cos, 0) ** 3`` and the symmetric
normalisation of Iscen et al. 2019, "Label propagation for deep semi-supervised learning"):

    F <- alpha * S @ F + (1 - alpha) * Y0,   S = D^-1/2 W D^-1/2,

with ``Y0`` the teacher's probabilities and the one-hot labels on labeled rows. Neighbours agree
more often than a linear head's single prediction: on the UCM validation split the smoothed labels
of the pool are 3-4 points more accurate than the teacher's (benchmarks/NOTES.md).

scikit-learn's ``LabelSpreading`` propagates the labeled rows' labels only (no teacher prior):
measured that way on the same graph, the pool's labels were 7-10 points *less* accurate than the
teacher's at 8% UCM labels, so the propagation is written here (a few sparse matrix products);
the neighbour search is sklearn's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse

__all__ = ["knn_affinity", "propagate", "graph_pseudo_labels", "balance_classes"]


def knn_affinity(feats: np.ndarray, k: int) -> scipy.sparse.csr_matrix:
    """Symmetric, normalised k-NN affinity ``D^-1/2 W D^-1/2`` of ``(n, d)`` features (cosine).

    ``W_ij = max(cos_ij, 0) ** 3`` for ``j`` among the ``k`` nearest neighbours of ``i`` (self
    excluded), symmetrised by ``W + W.T``. Rows are L2-normalised here.
    """
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(feats, dtype=np.float32)
    n = len(x)
    if n < 2:
        return sp.csr_matrix((n, n), dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, n - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)
    dist, idx = dist[:, 1:], idx[:, 1:]  # drop each point itself
    cos = 1.0 - dist.astype(np.float32) ** 2 / 2.0  # unit vectors: |a - b|^2 = 2 - 2 cos
    w = np.maximum(cos, 0.0) ** 3
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    W = (W + W.T).tocsr()
    deg = np.asarray(W.sum(1)).ravel()
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    D = sp.diags(inv.astype(np.float32))
    return (D @ W @ D).tocsr()


def propagate(S: scipy.sparse.csr_matrix, prior: np.ndarray, alpha: float, iters: int = 30) -> np.ndarray:
    """Row-normalised ``F`` after ``iters`` steps of ``F <- alpha S F + (1 - alpha) prior``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y0 = np.asarray(prior, dtype=np.float32)
    f = y0.copy()
    for _ in range(iters):
        f = alpha * (S @ f) + (1.0 - alpha) * y0
    f = np.maximum(f, 0.0)
    total = f.sum(1, keepdims=True)
    out = np.where(total > 0, f / np.maximum(total, 1e-12), y0)
    return out.astype(np.float32)


def graph_pseudo_labels(
    feats: np.ndarray,
    teacher_probs: np.ndarray,
    labeled: np.ndarray,
    labels: np.ndarray,
    *,
    k: int,
    alpha: float,
) -> np.ndarray:
    """Smoothed class probabilities ``(n, C)`` of every row.

    Args:
        feats: ``(n, d)`` features of the graph's nodes (labeled rows and pool rows).
        teacher_probs: ``(n, C)`` the teacher's probabilities of the same rows.
        labeled: Boolean ``(n,)``, rows whose label is known; their prior is one-hot.
        labels: ``(n,)`` int labels (read where ``labeled``).
        k: Neighbours per node.
        alpha: Propagation weight.
    """
    prior = np.asarray(teacher_probs, dtype=np.float32).copy()
    if prior.shape[0] != len(feats) or len(labeled) != len(feats):
        raise ValueError(f"{len(feats)} features, {prior.shape[0]} teacher rows, {len(labeled)} flags")
    lab = np.flatnonzero(labeled)
    prior[lab] = 0.0
    prior[lab, np.asarray(labels)[lab]] = 1.0
    return propagate(knn_affinity(feats, k), prior, alpha)


def balance_classes(probs: np.ndarray, prior: np.ndarray, iters: int = 10) -> np.ndarray:
    """Rows of ``probs`` rescaled per class so that the column masses follow ``prior`` (Sinkhorn).

    Alternately scales each class column to ``n * prior_c`` and renormalises each row to sum 1
    (``iters`` times, ending on the rows), so every row stays a distribution.
    """
    p = np.asarray(probs, dtype=np.float64).copy()
    q = np.asarray(prior, dtype=np.float64)
    if q.shape != (p.shape[1],) or (q < 0).any() or q.sum() <= 0:
        raise ValueError(f"prior must be ({p.shape[1]},) non-negative with a positive sum, got {q}")
    q = q / q.sum()
    for _ in range(iters):
        p *= (len(p) * q) / np.maximum(p.sum(0), 1e-12)
        p /= np.maximum(p.sum(1, keepdims=True), 1e-12)
    return p.astype(np.float32)
