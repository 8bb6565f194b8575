"""HAL's per-coarse-cluster step: the ``r * b_k`` most uncertain candidates, fine clusters, one pick each.

A :class:`ClusterTask` holds everything one coarse cluster needs, so :func:`_select_in_cluster`
runs anywhere: in the driver (``map``) or as a Ray task (``query.parallel``). Also the row helpers
other strategies share (:func:`take_rows`, :func:`typicality`).
"""

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hssal_ray.query.backends import assign_chunked, limit_threads, make_kmeans
from hssal_ray.query.base import top_k

logger = logging.getLogger(__name__)

#: TypiClust's k: typicality is the inverse mean distance to a candidate's 20 nearest neighbours.
TYPICAL_NEIGHBORS = 20
#: ``typical_over: pool`` measures a candidate's density against at most this many rows of its coarse
#: cluster (of the pool for the flat variant), a seeded sample above it, with k scaled by the sample's share.
DENSITY_REFERENCE_ROWS = 4096


def take_rows(emb: Any, rows: np.ndarray) -> np.ndarray:
    """Gather ``emb[rows]`` as a float32 numpy array (m, d); ``emb`` is numpy or torch (any device)."""
    if isinstance(emb, torch.Tensor):
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(emb.device)
        return emb.index_select(0, idx).float().cpu().numpy()
    return np.asarray(emb[np.asarray(rows)], dtype=np.float32)


#: relative margin below the squared radius of :func:`cross_cluster_duplicates` (float32 rounding is ~1e-7)
RADIUS_MARGIN = 1e-4

#: :func:`typicality` of at most this many points computes the whole (m, m) distance matrix in one strip
#: (64 MB at the bound); above it, strips of ``chunk_size`` rows (:func:`_blocked_density`)
SYMMETRIC_ROWS = 4096


def typicality(X: np.ndarray, n_neighbors: int = TYPICAL_NEIGHBORS, chunk_size: int = 1024) -> np.ndarray:
    """TypiClust typicality: ``1 / (mean Euclidean distance to the k nearest neighbours + 1e-8)``.

    The points' density among themselves: :func:`reference_typicality` with ``X`` as its own reference,
    but with exactly symmetric distances (:func:`_blocked_density`): a matrix product rounds
    ``d(a, b)`` and ``d(b, a)`` differently, and with few neighbours (``k = 1`` is common at the flat
    variant's scale) two mutual nearest neighbours have the same typicality, so which of them was
    "more typical" was decided by the last bit, which differs between CPUs (AVX2 and AVX-512 kernels);
    symmetric, they tie exactly and the pick rule's tie-break (priority order) decides, on every CPU.
    Up to :data:`SYMMETRIC_ROWS` points in one strip, above it in strips of ``chunk_size`` rows
    (HAL's coarse clusters hold that many candidates on an archive).

    Args:
        X: (m, d) points (float32 is used internally).
        n_neighbors: k, clipped to ``m - 1``.
        chunk_size: rows per distance strip above :data:`SYMMETRIC_ROWS`.

    Returns:
        (m,) float32; a single point gets 1.0.
    """
    m = X.shape[0]
    k = min(n_neighbors, m - 1)
    if k < 1:
        return np.ones(m, dtype=np.float32)
    C = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    return _blocked_density(C, k, m if m <= SYMMETRIC_ROWS else chunk_size)


def _blocked_density(C: torch.Tensor, k: int, chunk_size: int) -> np.ndarray:
    """:func:`_density` of the points ``C`` among themselves, by row strips, exactly symmetric.

    Strip ``s`` computes only its distances to rows ``>= s`` (the upper triangle); they serve its own
    rows and, transposed, the later rows, so ``d(a, b)`` and ``d(b, a)`` are one number (the strip's
    diagonal block is symmetrised: ``(D + D.T) / 2``). Each row keeps
    its ``k`` smallest distances so far, sorted, so the mean adds them in one order whichever strip they
    came from. Memory: ``(m, k)`` plus one ``(chunk, m)`` strip, as a row-chunked pass; half its products.
    """
    m = C.shape[0]
    c = max(1, int(chunk_size))
    best = torch.full((m, k), float("inf"))

    def merge(lo: int, hi: int, block: torch.Tensor) -> None:
        both = torch.cat([best[lo:hi], block], dim=1)
        best[lo:hi] = torch.topk(both, k, dim=1, largest=False, sorted=True).values

    for s in range(0, m, c):
        e = min(s + c, m)
        strip = _sq_dists(C[s:e], C[s:])  # (e - s, m - s): rows s:e against rows s:
        diag = strip[:, : e - s]
        diag.copy_((diag + diag.T).mul_(0.5)).fill_diagonal_(float("inf"))  # its own row is not a neighbour
        merge(s, e, strip)
        if e < m:
            merge(e, m, strip[:, e - s :].T)
    return _density(best, k)


def _density(d2: torch.Tensor, k: int) -> np.ndarray:
    """TypiClust density per row of squared distances: ``1 / (mean distance to the k nearest + 1e-8)``."""
    near = torch.topk(d2, k, dim=1, largest=False).values
    return (1.0 / (near.sqrt().mean(1) + 1e-8)).numpy()


def reference_typicality(
    cand: np.ndarray,
    ref: np.ndarray,
    self_pos: np.ndarray,
    n_neighbors: int = TYPICAL_NEIGHBORS,
    chunk_size: int = 1024,
) -> np.ndarray:
    """TypiClust typicality of the rows ``cand`` measured against other rows ``ref`` (e.g. the pool).

    ``1 / (mean Euclidean distance to the k nearest rows of ref + 1e-8)``, a candidate's own row
    left out: TypiClust's density of the data around a candidate, not of the candidates around it.

    Args:
        cand: (m, d) candidate points.
        ref: (R, d) reference points.
        self_pos: (m,) position of each candidate in ``ref``, or -1 where it is not there.
        n_neighbors: k, clipped to the rows available.
        chunk_size: candidates per (chunk, R) distance block.

    Returns:
        (m,) float32; 1.0 for every candidate when ``ref`` has no other row.
    """
    m, R = cand.shape[0], ref.shape[0]
    k = min(n_neighbors, R - 1 if (np.asarray(self_pos) >= 0).any() else R)
    if k < 1 or m == 0:
        return np.ones(m, dtype=np.float32)
    C = torch.from_numpy(np.ascontiguousarray(cand, dtype=np.float32))
    F = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    pos = torch.from_numpy(np.asarray(self_pos, dtype=np.int64))
    out = np.empty(m, dtype=np.float32)
    for s in range(0, m, chunk_size):
        d2 = _sq_dists(C[s : s + chunk_size], F)
        p = pos[s : s + chunk_size]
        own = torch.nonzero(p >= 0).flatten()
        d2[own, p[own]] = float("inf")  # its own row is not a neighbour
        out[s : s + d2.shape[0]] = _density(d2, k)
    return out


@dataclass(frozen=True)
class ClusterTask:
    """Steps 4-6 of one coarse cluster: everything :func:`_select_in_cluster` needs (picklable).

    Attributes:
        cluster: coarse cluster id (diagnostics only).
        emb: (m, d) float32 candidate embeddings, in priority order (most uncertain first).
        u: (m,) their uncertainty.
        n_picks: b_k, ``1 <= n_picks <= m``.
        fine_method: ``"kmeans"`` or ``"spectral"``.
        pick: ``"uncertain"``, ``"typical"``, ``"balanced"`` or ``"eer"`` (largest ``gain``).
        backend: CPU k-means backend for the fine level.
        max_iter: k-means iterations.
        seed: random seed of this task.
        gain: (m,) expected error reduction of labeling each candidate (``pick="eer"``,
            :func:`hssal_ray.query.eer.eer_gain`), or None.
        labeled: (L, d) float32 embeddings of the labeled rows of this coarse cluster, or None.
            With rows, the fine clustering covers candidates and labeled rows together into
            ``n_picks + L`` clusters and picks come from the clusters that hold no labeled row,
            largest first (TypiClust's coverage rule inside HAL's candidate set).
        n_neighbors: k of the typicality (``typical`` and ``balanced`` picks).
        density: (m,) typicality of the candidates measured elsewhere (``typical_over: pool``:
            against the pool rows of the coarse cluster), used instead of the candidates' own.
        cover: (m, R) bool, ``pick="cover"``: which reference rows (pool rows of the coarse
            cluster, or a sample of them) lie within the covering radius of each candidate
            (:func:`coverage`).
        covered: (R,) bool, ``pick="cover"``: reference rows already within the radius of a
            labeled row.
        cover_weight: (R,) weight of each reference row in a ball's gain (``cover_by:
            uncertainty``), or None: each row counts 1.
        probs: (m, C) class probabilities of the candidates, or None. With them the fine level
            clusters BADGE's gradient embeddings (:func:`gradient_embedding`, ``fine_space``)
            instead of ``emb``; densities and the picks' order are unchanged.
        labeled_probs: (L, C) the same for ``labeled`` (needed with both ``labeled`` and ``probs``).
    """

    cluster: int
    emb: np.ndarray
    u: np.ndarray
    n_picks: int
    fine_method: str = "kmeans"
    pick: str = "uncertain"
    backend: str = "torch"
    max_iter: int = 20
    seed: int = 0
    labeled: np.ndarray | None = None
    gain: np.ndarray | None = None
    n_neighbors: int = TYPICAL_NEIGHBORS
    density: np.ndarray | None = None
    cover: np.ndarray | None = None
    covered: np.ndarray | None = None
    cover_weight: np.ndarray | None = None
    probs: np.ndarray | None = None
    labeled_probs: np.ndarray | None = None


def gradient_embedding(emb: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """BADGE's last-layer gradient embeddings ``g_i = (p_i - onehot(argmax p_i)) ⊗ h_i`` (Ash et al., 2020).

    Two rows are near in this space when the model predicts them alike (class and confidence) *and*
    their features are near, so fine clusters in it split a region the features alone would merge
    along the classes the model hesitates between. Built explicitly: the fine level's problems are a
    coarse cluster's candidates (``m * C * d`` floats; the BADGE baseline, over the whole pool, never
    builds them).

    Args:
        emb: (m, d) features h.
        probs: (m, C) class probabilities p.

    Returns:
        (m, C * d) float32.
    """
    h = np.asarray(emb, dtype=np.float32)
    a = np.array(probs, dtype=np.float32)  # a copy: the one-hot is subtracted in place
    if a.ndim != 2 or h.ndim != 2 or a.shape[0] != h.shape[0]:
        raise ValueError(f"gradient_embedding needs (m, C) probs, (m, d) features; got {a.shape}, {h.shape}")
    a[np.arange(a.shape[0]), a.argmax(axis=1)] -= 1.0
    return (a[:, :, None] * h[:, None, :]).reshape(a.shape[0], -1)


def _fine_space(task: ClusterTask) -> tuple[np.ndarray, np.ndarray | None]:
    """The candidates' and labeled rows' points the fine level clusters: features, or gradients."""
    if task.probs is None:
        return task.emb, task.labeled
    lab = task.labeled
    if lab is not None and len(lab):
        if task.labeled_probs is None or len(task.labeled_probs) != len(lab):
            raise ValueError("a gradient fine level with labeled rows needs their probs (labeled_probs)")
        lab = gradient_embedding(lab, task.labeled_probs)
    return gradient_embedding(task.emb, task.probs), lab


def _fine_labels(task: ClusterTask) -> np.ndarray:
    m, b = task.emb.shape[0], task.n_picks
    x, _ = _fine_space(task)
    if task.fine_method == "spectral":
        from sklearn.cluster import SpectralClustering

        sc = SpectralClustering(
            # k ~ the expected fine-cluster size (r): a sparse graph whose components are the groups
            n_clusters=b,
            affinity="nearest_neighbors",
            n_neighbors=min(m - 1, max(3, math.ceil(m / b))),
            assign_labels="cluster_qr",
            random_state=task.seed,
        )
        with warnings.catch_warnings():  # disconnected kNN graphs are expected (tight clusters)
            warnings.filterwarnings("ignore", message="Graph is not fully connected", category=UserWarning)
            return np.asarray(sc.fit_predict(x), dtype=np.int64)
    km = make_kmeans(task.backend, n_clusters=b, max_iter=task.max_iter, random_state=task.seed)
    return np.asarray(km.fit(x).labels_, dtype=np.int64)


def _select_in_cluster(task: ClusterTask) -> np.ndarray:
    """Fine clustering of one coarse cluster's candidates and one pick per fine cluster.

    Returns:
        (n_picks,) int64 unique positions into ``task.emb``, ascending (= priority order). Empty
        or duplicate fine clusters (e.g. identical embeddings) are filled with the next
        candidates in priority order (uncertain) or by typicality (typical).
    """
    m, b = task.emb.shape[0], task.n_picks
    if b >= m:
        return np.arange(m, dtype=np.int64)
    if task.pick == "cover":
        if task.cover is None or task.covered is None or task.cover.shape != (m, task.covered.size):
            raise ValueError(f"pick 'cover' needs an (m={m}, R) cover matrix and an (R,) covered mask")
        return np.sort(greedy_cover(task.cover, task.covered, b, task.cover_weight))
    dim = task.emb.shape[1] * (1 if task.probs is None else task.probs.shape[1])  # C * d for gradients
    with limit_threads(float(m) * max(b, 20) * dim):
        return _pick(task, m, b)


def candidate_rank(task: ClusterTask) -> np.ndarray:
    """(m,) float64 rank of each candidate under the task's pick rule (lower = picked first).

    Position in priority order (``uncertain``, ``cover``), -density (``typical``), the sum of both ranks over
    the task's candidates (``balanced``: Borda count of uncertainty and typicality, scale-free:
    information density), or -gain (``eer``: expected error reduction on the graph).
    """
    m = task.emb.shape[0]
    if task.pick == "eer":
        if task.gain is None or len(task.gain) != m:
            raise ValueError(f"pick 'eer' needs a gain per candidate ({m}), got {task.gain!r:.60}")
        return -np.asarray(task.gain, dtype=np.float64)
    if task.pick not in ("typical", "balanced"):
        return np.arange(m, dtype=np.float64)
    if task.density is not None and len(task.density) != m:
        raise ValueError(f"a density per candidate ({m}) is needed, got {len(task.density)}")
    dens = task.density if task.density is not None else typicality(task.emb, task.n_neighbors)
    if task.pick == "typical":
        return -dens.astype(np.float64)
    by_density = np.empty(m, dtype=np.float64)
    by_density[np.argsort(-dens, kind="stable")] = np.arange(m)
    return np.arange(m, dtype=np.float64) + by_density


def _pick(task: ClusterTask, m: int, b: int) -> np.ndarray:
    rank = candidate_rank(task)  # inside each fine cluster, the best-ranked candidate is picked
    if task.labeled is not None and len(task.labeled):
        picks = _uncovered_picks(task, m, b, rank)
    elif b == 1:
        return np.array([int(np.lexsort((np.arange(m), rank))[0])], dtype=np.int64)
    else:
        labels = _fine_labels(task)
        order = np.lexsort((np.arange(m), rank, labels))  # by cluster, then best rank first
        first = np.ones(m, dtype=bool)
        first[1:] = labels[order][1:] != labels[order][:-1]
        picks = order[first][:b]
    if picks.size < b:
        fill_order = np.lexsort((np.arange(m), rank))
        rest = fill_order[np.isin(fill_order, picks, invert=True)]
        picks = np.concatenate([picks, rest[: b - picks.size]])
    return np.sort(picks).astype(np.int64)


def _uncovered_picks(task: ClusterTask, m: int, b: int, rank: np.ndarray) -> np.ndarray:
    """Best-ranked candidate of each fine cluster without a labeled row, largest clusters first.

    Candidates and the labeled rows are clustered together into ``b + L`` clusters (at most the
    number of points); a cluster holding a labeled row is covered. Uncovered clusters are taken by
    candidate count (descending), then covered ones by fewest labeled rows, as in TypiClust.
    """
    heads, c, n_lab, n_cand = _cluster_heads(task, rank)
    prio = np.lexsort((c, -n_cand, n_lab))  # fewest labeled, then largest, then id
    return heads[prio][:b]


def _cluster_heads(
    task: ClusterTask, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TypiClust's joint clustering of the candidates and the labeled rows, one head per cluster.

    The task's candidates and its labeled rows (none: only the candidates) are clustered together
    into ``n_picks + L`` clusters (at most the number of points). Returns, for every fine cluster
    holding a candidate: its best-ranked candidate (position into ``task.emb``), the cluster's id,
    and the labeled rows and candidates it holds, all (h,) int64.
    """
    pts, lab = _fine_space(task)
    m = pts.shape[0]
    x = pts if lab is None or len(lab) == 0 else np.concatenate([pts, np.asarray(lab, dtype=np.float32)])
    k = int(min(task.n_picks + x.shape[0] - m, x.shape[0]))
    km = make_kmeans(task.backend, n_clusters=k, max_iter=task.max_iter, random_state=task.seed)
    labels_all = np.asarray(km.fit(x).labels_, dtype=np.int64)
    labels, lab_labels = labels_all[:m], labels_all[m:]
    n_cand = np.bincount(labels, minlength=k)
    n_lab_in = np.bincount(lab_labels, minlength=k)
    order = np.lexsort((np.arange(m), rank, labels))  # by cluster, then best rank first
    first = np.ones(m, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    heads = order[first]  # best candidate of each non-empty candidate cluster
    c = labels[heads]
    return heads, c, n_lab_in[c], n_cand[c]


def fine_heads(task: ClusterTask) -> np.ndarray:
    """HAL's ``cover_scale: flat`` fine step: every fine cluster's head, with its coverage counts.

    :func:`_cluster_heads` of the task (candidates and the coarse cluster's labeled rows into
    ``n_picks + L`` fine clusters, the best candidate of each under the task's pick rule), without
    choosing among them: HAL ranks the heads of all its coarse clusters together
    (:func:`merge_heads`), so a coarse cluster whose fine clusters the labels already cover gives
    its picks to one whose fine clusters they do not, as one clustering of all the candidates would.

    Returns:
        (h, 3) int64 rows ``[position into task.emb, labeled rows in its fine cluster, candidates
        in it]``, one per fine cluster holding a candidate.
    """
    m = task.emb.shape[0]
    if task.pick == "cover":
        raise ValueError("fine_heads clusters the candidates; pick 'cover' has no fine clusters")
    dim = task.emb.shape[1] * (1 if task.probs is None else task.probs.shape[1])
    with limit_threads(float(m) * max(task.n_picks, 20) * dim):
        heads, _, n_lab, n_cand = _cluster_heads(task, candidate_rank(task))
    return np.stack([heads, n_lab, n_cand], axis=1).astype(np.int64)


def merge_heads(
    rows: np.ndarray, n_lab: np.ndarray, n_cand: np.ndarray, u: np.ndarray, budget: int
) -> np.ndarray:
    """The ``budget`` heads TypiClust's rule takes first, over every coarse cluster's fine clusters.

    Fine clusters holding no labeled row before covered ones (fewest labeled rows first), then the
    fine clusters with the most candidates, then the head's uncertainty ``u`` (higher first), then
    the row. ``rows``, ``n_lab``, ``n_cand`` and ``u`` are (h,) arrays, one entry per head; returns
    at most ``budget`` rows of ``rows`` in that order.
    """
    order = np.lexsort((rows, -np.asarray(u, dtype=np.float64), -n_cand, n_lab))
    return np.asarray(rows, dtype=np.int64)[order][:budget]


def kth_neighbor_distance(X: np.ndarray, k: int, chunk_size: int = 1024) -> np.ndarray:
    """(R,) float32 Euclidean distance of each row of ``X`` to its ``k``-th nearest other row.

    ``k`` is clipped to ``R - 1``; a single row gets 0.
    """
    R = X.shape[0]
    k = min(int(k), R - 1)
    if k < 1:
        return np.zeros(R, dtype=np.float32)
    F = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    out = np.empty(R, dtype=np.float32)
    for s in range(0, R, chunk_size):
        d2 = _sq_dists(F[s : s + chunk_size], F)
        i = torch.arange(d2.shape[0])
        d2[i, i + s] = float("inf")  # a row is not its own neighbour
        out[s : s + d2.shape[0]] = torch.topk(d2, k, dim=1, largest=False).values[:, -1].sqrt().numpy()
    return out


def coverage(
    cand: np.ndarray, ref: np.ndarray, labeled: np.ndarray | None, radius: float, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """ProbCover's balls (Yehuda et al., 2022): which reference rows each candidate would cover.

    Args:
        cand: (m, d) candidate points.
        ref: (R, d) reference points (the data to cover).
        labeled: (L, d) labeled points, or None.
        radius: the ball's radius (Euclidean).
        chunk_size: rows per distance block.

    Returns:
        ``(cover, covered)``: (m, R) bool, ``||cand_j - ref_i|| <= radius``; (R,) bool, reference rows
        already within ``radius`` of a labeled point.
    """
    r2 = float(radius) ** 2
    F = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))

    def within(x: np.ndarray) -> np.ndarray:
        X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out = np.zeros((X.shape[0], F.shape[0]), dtype=bool)
        for s in range(0, X.shape[0], chunk_size):
            out[s : s + chunk_size] = (_sq_dists(X[s : s + chunk_size], F) <= r2).numpy()
        return out

    cover = within(cand)
    if labeled is None or len(labeled) == 0:
        return cover, np.zeros(F.shape[0], dtype=bool)
    covered = np.zeros(F.shape[0], dtype=bool)
    for s in range(0, len(labeled), chunk_size):
        covered |= within(labeled[s : s + chunk_size]).any(0)
    return cover, covered


def greedy_cover(
    cover: np.ndarray, covered: np.ndarray, b: int, weight: np.ndarray | None = None
) -> np.ndarray:
    """ProbCover's greedy max coverage: ``b`` times, the candidate whose ball holds the most
    reference rows no labeled row or earlier pick covers yet (with ``weight``: the largest sum of
    their weights, e.g. their uncertainty: the most uncertain mass not yet near a label).

    Ties (and candidates once nothing uncovered is left within reach) go to the lower position,
    i.e. the more uncertain candidate: candidates come in priority order. Greedy is within
    ``1 - 1/e`` of the best coverage (the objective is submodular).

    Args:
        cover: (m, R) bool ball membership (:func:`coverage`).
        covered: (R,) bool, already covered.
        b: picks, ``b <= m``.
        weight: (R,) non-negative weight of each reference row, or None (each counts 1).

    Returns:
        (b,) int64 candidate positions in the order they were picked.
    """
    m, R = cover.shape
    if b > m:
        raise ValueError(f"cannot pick {b} of {m} candidates")
    w = np.ones(R) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (R,) or not (w >= 0).all():
        raise ValueError(f"weight must be ({R},) and non-negative")
    free = ~np.asarray(covered, dtype=bool)
    gain = cover[:, free].astype(np.float64) @ w[free]
    out = np.empty(b, dtype=np.int64)
    for t in range(b):
        j = int(np.argmax(gain))  # the first maximum: the most uncertain of the best
        out[t] = j
        new = cover[j] & free
        if new.any():
            gain -= cover[:, new].astype(np.float64) @ w[new]
            free &= ~new
        gain[j] = -np.inf
    return out


def _top_candidates(u: np.ndarray, rows: np.ndarray, conf: np.ndarray | None, m: int) -> np.ndarray:
    """The ``m`` highest-priority rows: most uncertain first, confident rows only if needed."""
    if conf is None or not conf.any():
        return rows[top_k(u, m, rows)]
    ok = np.flatnonzero(~conf)
    if ok.size >= m:
        return rows[ok[top_k(u[ok], m, rows[ok])]]
    rest = np.flatnonzero(conf)
    fill = rest[top_k(u[rest], m - ok.size, rows[rest])]
    return np.concatenate([rows[ok[top_k(u[ok], ok.size, rows[ok])]], rows[fill]])


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared Euclidean distances, clamped at 0 (float32)."""
    return torch.addmm((b * b).sum(1), a, b.T, alpha=-2.0).add_((a * a).sum(1)[:, None]).clamp_(min=0)


def _nearest_sq(x: Any, centers: torch.Tensor) -> torch.Tensor:
    """(len(x),) squared distance of each row of ``x`` to its nearest row of ``centers``."""
    return torch.from_numpy(assign_chunked(x, centers, return_distances=True)[1])


def cross_cluster_duplicates(
    emb: Any,
    picks: np.ndarray,
    cands: list[np.ndarray],
    coarse: np.ndarray,
    rank_of: Callable[[int], np.ndarray] | None = None,
    chunk_size: int = 2048,
    within: bool = False,
    spares: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Replace picks that duplicate a pick of another coarse cluster (HAL's boundary check).

    The fine level keeps the picks of one coarse cluster apart (one per fine cluster), but two
    coarse clusters are solved apart: near-copies of one scene that straddle a coarse boundary are
    picked once on each side. The flat variant, which clusters all candidates together, puts them
    in one fine cluster. The scale of "one fine cluster" is measured, not set: ``radius`` is the
    median distance from a candidate (not a pick) to the nearest pick of its own coarse cluster.
    Going down the batch in priority order, a pick closer than ``radius`` to an earlier kept pick
    of *another* coarse cluster is dropped; each dropped pick is replaced by the first candidate
    of its own coarse cluster (priority order) at least ``radius`` from every pick, or, when none
    is, by the candidate farthest from them (if farther than the dropped pick was); else it stays.
    With ``rank_of``, "first" follows the round's pick rule (e.g. the most typical) instead.

    ``within=True`` (``query.copy_check``) compares every pair of picks, of one coarse cluster too:
    fine clusters keep a cluster's picks apart only while its candidates hold more distinct scenes
    than it has picks. With few candidates per pick (``late_candidate_ratio``) and a scene present
    many times, k-means cuts the scene's copies into two fine clusters and both are picked; at the
    scale of one fine cluster, those two are as much duplicates as a pair across a coarse boundary.
    One coarse cluster (the flat variant: ``coarse`` all 0) is then checked too. Its candidates then
    often hold no other scene, so ``spares`` (the next rows of each cluster in priority order, e.g.
    the ones the early rounds' wider candidate ratio would have taken) are tried after them: a
    dropped pick is replaced by the first of its cluster's candidates, else of its spares, at least
    ``radius`` from every pick, and only then by the farthest candidate.

    Args:
        emb: pool embeddings (numpy or torch, any device); rows are indexed by ``picks``/``cands``.
        picks: (B,) pool rows in priority order (most uncertain first).
        cands: candidate pool rows of each coarse cluster that has picks, priority order each; the
            picks are among them.
        coarse: (n,) coarse cluster of every pool row.
        rank_of: ``rank_of(i)`` is the (len(cands[i]),) rank of ``cands[i]`` under the pick rule
            (lower first, :func:`candidate_rank`); None: priority order. Called only for clusters
            that lost a pick.
        chunk_size: rows per distance block.
        within: compare picks of the same coarse cluster too (else only across clusters).
        spares: per entry of ``cands``, more rows of that coarse cluster (priority order, none of
            them a candidate) for replacements; the radius is then measured over candidates and
            spares: the scale of a fine cluster at the wider ratio, not of one holding a scene's
            copies.

    Returns:
        ``(picks, info)``: the batch (same size, priority order of the original kept, then the
        replacements), and ``info`` with ``radius``, ``n_dropped`` and ``n_replaced``.
    """
    picks = np.asarray(picks, dtype=np.int64)
    B = picks.size
    info = {"radius": 0.0, "n_dropped": 0, "n_replaced": 0}
    if B < 2 or (len(cands) < 2 and not within):
        return picks, info
    P = torch.from_numpy(take_rows(emb, picks))
    pc = coarse[picks]
    is_pick = set(picks.tolist())
    near = []  # each non-pick candidate's distance to the nearest pick of its coarse cluster
    for i, c in enumerate(cands):
        wide = c if spares is None else np.concatenate([c, spares[i]])  # the scale at the wider ratio
        rest = np.array([r for r in wide.tolist() if r not in is_pick], dtype=np.int64)
        own = torch.from_numpy(np.flatnonzero(pc == coarse[c[0]]))
        if rest.size == 0 or own.numel() == 0:
            continue
        near.append(_nearest_sq(take_rows(emb, rest), P[own]))
    if not near:
        return picks, info
    r2 = float(torch.cat(near).median())  # the lower median
    info["radius"] = math.sqrt(r2)
    # The radius is one candidate's own distance, which the comparisons below compute again through
    # other matrix shapes: compared with r2 itself, that candidate's side of it was the last bit's
    # call and differed between CPUs. A margin far below any scale of the data settles it.
    r2 = r2 * (1.0 - RADIUS_MARGIN)
    # close pairs (i later than j in priority order; across coarse clusters unless within), in blocks
    pairs: list[tuple[int, int]] = []
    pct = torch.from_numpy(pc)
    for s in range(0, B, chunk_size):
        d2 = _sq_dists(P[s : s + chunk_size], P)
        i_idx = torch.arange(s, min(s + chunk_size, B))[:, None]
        mask = (d2 < r2) & (torch.arange(B)[None, :] < i_idx)
        if not within:
            mask &= pct[s : s + chunk_size, None] != pct[None, :]
        ii, jj = torch.nonzero(mask, as_tuple=True)
        pairs += list(zip((ii + s).tolist(), jj.tolist(), strict=True))
    if not pairs:
        return picks, info
    dropped = np.zeros(B, dtype=bool)
    by_i: dict[int, list[int]] = {}
    for i, j in pairs:
        by_i.setdefault(i, []).append(j)
    for i in sorted(by_i):
        dropped[i] = any(not dropped[j] for j in by_i[i])
    kept = picks[~dropped]
    info["n_dropped"] = int(dropped.sum())
    buf = torch.empty((B, P.shape[1]), dtype=P.dtype)  # the batch so far: kept, then replacements
    n_in = kept.size
    buf[:n_in] = P[torch.from_numpy(np.flatnonzero(~dropped))]
    index_of = {int(coarse[c[0]]): i for i, c in enumerate(cands)}
    mins: dict[int, torch.Tensor] = {}  # per coarse cluster: its candidates' distance to the batch
    cx: dict[int, torch.Tensor] = {}  # and their embeddings
    best: dict[int, np.ndarray] = {}  # and their order of preference
    sx: dict[int, torch.Tensor] = {}  # per coarse cluster: its spares' embeddings
    smins: dict[int, torch.Tensor] = {}  # and their distance to the batch
    # within: how much of the batch each cluster's mins / smins have seen. They catch up in one block when
    # the cluster is next visited, not in one pass over every visited cluster per replacement: at B = 4,000
    # with ~650 replacements the eager passes tripled HAL's select (hierarchy_scale_late_copy_check.md).
    synced: dict[int, int] = {}
    taken = set(kept.tolist())
    out = [*kept.tolist()]
    for i in np.flatnonzero(dropped):
        k = int(pc[i])
        c = cands[index_of[k]]
        if k in mins and synced.get(k, n_in) < n_in:  # within: catch up with the picks added since
            mins[k] = torch.minimum(mins[k], _nearest_sq(cx[k], buf[synced[k] : n_in]))
            if k in smins:
                smins[k] = torch.minimum(smins[k], _nearest_sq(sx[k], buf[synced[k] : n_in]))
        if within:
            synced[k] = n_in
        if k not in mins:
            cx[k] = torch.from_numpy(take_rows(emb, c))
            mins[k] = _nearest_sq(cx[k], buf[:n_in])
            best[k] = (
                np.arange(c.size)
                if rank_of is None
                else np.lexsort((np.arange(c.size), rank_of(index_of[k])))
            )
        free = torch.from_numpy(np.array([r not in taken for r in c.tolist()]))
        m = torch.where(free, mins[k], torch.full_like(mins[k], -1.0))
        far = (m >= r2).numpy()[best[k]]
        ok = best[k][far]
        spare = spares[index_of[k]] if spares is not None else np.empty(0, dtype=np.int64)
        if not ok.size and spare.size and k not in smins:
            sx[k] = torch.from_numpy(take_rows(emb, spare))
            smins[k] = _nearest_sq(sx[k], buf[:n_in])
        s_ok = np.empty(0, dtype=np.int64)
        if not ok.size and k in smins:
            s_free = torch.from_numpy(np.array([r not in taken for r in spare.tolist()]))
            s_ok = np.flatnonzero((s_free & (smins[k] >= r2)).numpy())
        dp = float(_nearest_sq(P[i : i + 1], buf[:n_in])[0]) if n_in else 0.0
        if ok.size:
            row = int(c[int(ok[0])])
        elif s_ok.size:  # no candidate is another scene: the first spare that is
            row = int(spare[int(s_ok[0])])
        elif float(m.max()) > dp:
            row = int(c[int(m.argmax())])
        else:  # nothing farther from the batch than the dropped pick: it stays
            row = int(picks[i])
        if row != picks[i]:
            info["n_replaced"] += 1
        out.append(row)
        taken.add(row)
        new = torch.from_numpy(take_rows(emb, np.array([row])))
        buf[n_in] = new[0]
        n_in += 1
        if within:  # many replacements: each cluster catches up with the batch when next visited
            continue
        for kk, v in mins.items():  # the new pick is now part of the batch
            mins[kk] = torch.minimum(v, _nearest_sq(cx[kk], new))
        for kk, v in smins.items():
            smins[kk] = torch.minimum(v, _nearest_sq(sx[kk], new))
    return np.asarray(out, dtype=np.int64), info
