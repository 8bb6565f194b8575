"""Graph-smoothed pseudo-labels for the frozen head (``ssl.pseudo_labels=graph``): numpy/scipy/faiss.

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
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse

__all__ = [
    "knn_affinity",
    "propagate",
    "graph_pseudo_labels",
    "balance_classes",
    "KnnGraph",
    "build_graph",
    "exact_knn",
    "ivf_knn",
    "symmetric_weights",
    "normalised_affinity",
    "recall_at_k",
    "sampled_recall",
    "torch_csr",
    "LIST_ROWS",
    "PROBE_ROWS",
    "PCA_DIM",
]

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------------------ neighbour search


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
    import faiss
    import torch

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
        sims, nn = faiss.knn(q, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
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
        rows = np.asarray(rows, dtype=np.int64)
        p = np.minimum(np.searchsorted(srt, rows), max(len(srt) - 1, 0))
        if len(rows) and (len(srt) == 0 or not np.array_equal(srt[p], rows)):
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
