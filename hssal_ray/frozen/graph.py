"""Graph-smoothed pseudo-labels for the frozen head (``frozen.pseudo_labels=graph``): numpy/scipy/faiss.

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
teacher's at 8% UCM labels, so the propagation is written here (a few sparse matrix products).

The graph (:class:`KnnGraph`, :func:`build_graph`). The head's graph features (the clean view,
L2-normalised and standardised with fixed statistics) do not change during a run, so the graph of
the whole training split is built once and every round propagates over it (the rows of the round:
the labeled set and the whole pool). The neighbour search is exact up to ``max_exact`` nodes
(tiled matrix products and top-k, :func:`hssal_ray.frozen.knn_torch.knn_cosine`; on a GPU at any
size) and approximate above, by :func:`ivf_knn`: faiss k-means splits the rows into lists of about
:data:`LIST_ROWS` rows (in a :data:`PCA_DIM`-dimensional PCA projection), and the rows of each list
are searched exactly (one faiss matrix product and top-k, in the full dimension) among about
:data:`PROBE_ROWS` rows of the lists nearest to them (the lists that are among the
:data:`NEAR_LISTS` nearest of most of the list's rows). Its cost is ``n * PROBE_ROWS * d`` instead of
``n^2 * d``. Its recall of the exact neighbours is measured where it is built, on 100 sampled rows
(:func:`sampled_recall`: logged, and ``graph_recall`` in the round's metrics), and in
``tests/unit/frozen/test_graph_scale.py``.
The propagation runs in the lists' order, so that a row's neighbours are near it in memory.
The search itself is :mod:`hssal_ray.frozen.knn_search`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hssal_ray.frozen.knn_search import (
    BLOCK_ROWS,
    Features,
    _unit,
    exact_knn,
    ivf_knn,
    sampled_recall,
)
from hssal_ray.query.base import find_rows

if TYPE_CHECKING:
    import scipy.sparse

__all__ = [
    "knn_affinity",
    "propagate",
    "graph_pseudo_labels",
    "balance_classes",
    "KnnGraph",
    "build_graph",
    "symmetric_weights",
    "normalised_affinity",
    "torch_csr",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ affinity


def symmetric_weights(cos: np.ndarray, idx: np.ndarray) -> scipy.sparse.csr_matrix:
    """``W + W.T`` with ``W_ij = max(cos_ij, 0) ** 3`` on the k-NN edges ``(n, k)`` (float32 CSR)."""
    import scipy.sparse as sp

    n, k = idx.shape
    w = np.maximum(np.asarray(cos, dtype=np.float32), 0.0) ** 3
    W = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    return (W + W.T).tocsr()


def normalised_affinity(W: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """``D^-1/2 W D^-1/2`` of a symmetric weight matrix (rows without edges stay empty)."""
    import scipy.sparse as sp

    deg = np.asarray(W.sum(1)).ravel()
    inv = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    D = sp.diags(inv.astype(np.float32))
    return (D @ W @ D).tocsr()


def knn_affinity(feats: np.ndarray, k: int) -> scipy.sparse.csr_matrix:
    """Symmetric, normalised k-NN affinity ``D^-1/2 W D^-1/2`` of ``(n, d)`` features (cosine).

    ``W_ij = max(cos_ij, 0) ** 3`` for ``j`` among the ``k`` nearest neighbours of ``i`` (self
    excluded, exact search), symmetrised by ``W + W.T``. Rows are L2-normalised here.
    """
    import scipy.sparse as sp

    n = len(feats)
    if n < 2:
        return sp.csr_matrix((n, n), dtype=np.float32)
    cos, idx = exact_knn(_unit(feats), k)
    return normalised_affinity(symmetric_weights(cos, idx))


# ------------------------------------------------------------------------------ the run's graph


@dataclass
class KnnGraph:
    """The k-NN graph of a set of store rows (its nodes), built once and propagated over every round.

    Attributes:
        rows: ``(n,)`` store rows of the nodes (node ``i`` is store row ``rows[i]``).
        cos: ``(n, k)`` float32 cosine of each node's neighbours.
        idx: ``(n, k)`` int64 neighbour nodes (self excluded).
        order: A node order that keeps neighbours near each other in memory (or None).
        method: ``exact`` or ``ivf``.
        recall: recall@k against the exact search (1 for ``exact``; ``ivf``: measured on sampled
            rows, :func:`sampled_recall`).
    """

    rows: np.ndarray
    cos: np.ndarray
    idx: np.ndarray
    order: np.ndarray | None = None
    method: str = "exact"
    recall: float = 1.0
    _sorted: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _W: Any = field(default=None, repr=False)
    _S: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Nodes of store rows ``rows`` (ValueError if one is not a node)."""
        if self._sorted is None:
            o = np.argsort(self.rows, kind="stable")
            self._sorted = (self.rows[o], o)
        srt, o = self._sorted
        p, found = find_rows(srt, rows)
        if not found.all():
            raise ValueError("rows outside the graph's nodes")
        return o[p]

    def smooth(self, prior: np.ndarray, alpha: float, nodes: np.ndarray | None = None) -> np.ndarray:
        """Propagate ``prior`` ``(n, C)`` (one row per node) over the graph; returns ``(n, C)``.

        With ``nodes`` (positions), only those nodes take part: the graph is restricted to the
        edges between them and normalised again; the other rows of the result are the prior's.
        """
        if self._W is None:
            self._W = symmetric_weights(self.cos, self.idx)
        if nodes is not None and len(nodes) < len(self):
            nodes = np.asarray(nodes, dtype=np.int64)
            out = np.asarray(prior, dtype=np.float32).copy()
            S = normalised_affinity(self._W[nodes][:, nodes].tocsr())
            out[nodes] = propagate(S, out[nodes], alpha)
            return out
        if self._S is None:
            S = normalised_affinity(self._W)
            self._S = torch_csr(S if self.order is None else S[self.order][:, self.order].tocsr())
        if self.order is None:
            return propagate(self._S, prior, alpha)
        out = np.empty_like(np.asarray(prior, dtype=np.float32))
        out[self.order] = propagate(self._S, np.asarray(prior, dtype=np.float32)[self.order], alpha)
        return out

    def to_bytes(self) -> bytes:
        """The graph as an ``.npz`` file (no pickled objects)."""
        import io

        buf = io.BytesIO()
        order = self.order if self.order is not None else np.zeros(0, np.int64)
        np.savez(
            buf,
            rows=self.rows,
            cos=self.cos,
            idx=self.idx.astype(np.int32 if len(self) < 2**31 else np.int64),
            order=order,
            method=np.array(self.method),
            recall=np.array(self.recall, dtype=np.float64),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KnnGraph:
        """Read :meth:`to_bytes`; ValueError on a file that is not a consistent graph."""
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            rows, cos, idx, order = z["rows"], z["cos"], z["idx"].astype(np.int64), z["order"]
            method = str(z["method"])
            recall = float(z["recall"]) if "recall" in z.files else float("nan")
        n = len(rows)
        if cos.shape != idx.shape or cos.ndim != 2 or len(cos) != n or (len(order) not in (0, n)):
            raise ValueError(
                f"inconsistent graph arrays: rows {rows.shape}, cos {cos.shape}, idx {idx.shape}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError("neighbour index out of range")
        return cls(
            rows=rows.astype(np.int64),
            cos=cos.astype(np.float32),
            idx=idx,
            order=order.astype(np.int64) if len(order) else None,
            method=method,
            recall=recall,
        )


def build_graph(
    feats: Features,
    rows: np.ndarray,
    k: int,
    *,
    max_exact: int,
    seed: int = 0,
    device: Any = None,
) -> KnnGraph:
    """The k-NN graph of store rows ``rows`` (exact up to ``max_exact`` nodes or on ``device`` cuda).

    Args:
        feats: The nodes' unit features by position (:data:`Features`).
        rows: ``(n,)`` store rows of the nodes.
        k: Neighbours per node.
        max_exact: The largest node count searched exactly on a CPU.
        seed: Seeds the approximate search.
        device: ``cuda`` searches exactly on the GPU whatever the size (None or ``cpu``: the CPU).
    """
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if n <= max_exact or on_gpu:
        z = np.empty((n, 0), np.float32)
        for s in range(0, n, BLOCK_ROWS):
            block = np.ascontiguousarray(feats(np.arange(s, min(n, s + BLOCK_ROWS))), dtype=np.float32)
            if s == 0:
                z = np.empty((n, block.shape[1]), dtype=np.float16 if on_gpu else np.float32)
            z[s : s + len(block)] = block
        if n < 2:
            return KnnGraph(rows=rows, cos=np.zeros((n, 0), np.float32), idx=np.zeros((n, 0), np.int64))
        cos, idx = exact_knn(z, k, device=device)
        return KnnGraph(rows=rows, cos=cos, idx=idx, method="exact")
    cos, idx, order = ivf_knn(feats, n, k, seed=seed)
    recall = sampled_recall(feats, n, idx, seed=seed)
    return KnnGraph(rows=rows, cos=cos, idx=idx, order=order, method="ivf", recall=recall)


# ------------------------------------------------------------------------------ propagation


def propagate(S: Any, prior: np.ndarray, alpha: float, iters: int = 30) -> np.ndarray:
    """Row-normalised ``F`` after ``iters`` steps of ``F <- alpha S F + (1 - alpha) prior``.

    ``S``: a scipy CSR matrix, or the torch sparse CSR tensor of one (:func:`torch_csr`, kept by
    :class:`KnnGraph`). The products are torch's sparse-dense ``mm`` into two reused buffers.
    """
    import torch

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    T = S if isinstance(S, torch.Tensor) else torch_csr(S)
    y0 = torch.from_numpy(np.ascontiguousarray(prior, dtype=np.float32))
    base = (1.0 - alpha) * y0
    f, g = y0.clone(), torch.empty_like(y0)
    for _ in range(iters):
        torch.mm(T, f, out=g)
        g.mul_(alpha).add_(base)
        f, g = g, f
    f.clamp_(min=0.0)
    total = f.sum(1, keepdim=True)
    return torch.where(total > 0, f / total.clamp_min(1e-12), y0).numpy()


def torch_csr(S: scipy.sparse.csr_matrix) -> Any:
    """A scipy CSR matrix as a float32 torch sparse CSR tensor."""
    import torch

    if S.shape[0] == 0:
        return torch.zeros(S.shape, dtype=torch.float32).to_sparse_csr()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": sparse @ dense is what is used
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
        )
        return torch.sparse_csr_tensor(
            torch.from_numpy(S.indptr.astype(np.int64)),
            torch.from_numpy(S.indices.astype(np.int64)),
            torch.from_numpy(S.data.astype(np.float32, copy=False)),
            size=S.shape,
            check_invariants=False,  # a scipy CSR matrix: sorted, in range
        )


def _prior(teacher_probs: np.ndarray, labeled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    prior = np.asarray(teacher_probs, dtype=np.float32).copy()
    lab = np.flatnonzero(labeled)
    prior[lab] = 0.0
    prior[lab, np.asarray(labels)[lab]] = 1.0
    return prior


def graph_pseudo_labels(
    feats: np.ndarray,
    teacher_probs: np.ndarray,
    labeled: np.ndarray,
    labels: np.ndarray,
    *,
    k: int,
    alpha: float,
) -> np.ndarray:
    """Smoothed class probabilities ``(n, C)`` of every row (exact graph of ``feats``).

    Args:
        feats: ``(n, d)`` features of the graph's nodes (labeled rows and pool rows).
        teacher_probs: ``(n, C)`` the teacher's probabilities of the same rows.
        labeled: Boolean ``(n,)``, rows whose label is known; their prior is one-hot.
        labels: ``(n,)`` int labels (read where ``labeled``).
        k: Neighbours per node.
        alpha: Propagation weight.
    """
    if np.shape(teacher_probs)[0] != len(feats) or len(labeled) != len(feats):
        raise ValueError(
            f"{len(feats)} features, {np.shape(teacher_probs)[0]} teacher rows, {len(labeled)} flags"
        )
    return propagate(knn_affinity(feats, k), _prior(teacher_probs, labeled, labels), alpha)


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
