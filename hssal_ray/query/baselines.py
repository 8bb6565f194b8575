"""Baseline query strategies in the same interface as HAL.

``random``; ``entropy`` / ``margin`` (top-B by the score); ``typiclust`` (flat k-means with
k = budget, the most typical row per cluster: the "KMeans/TypiClust" baseline of AL libraries);
``coreset`` (k-center greedy, chunked distance updates); ``badge`` (k-means++ seeding on gradient
embeddings without materialising them).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch

from hssal_ray.errors import DataError
from hssal_ray.query.backends import BACKENDS, FIT_ROWS_PER_CENTROID, _to_torch, assign_chunked, make_kmeans
from hssal_ray.query.base import Pool, QueryStrategy, register, top_k
from hssal_ray.query.hal_steps import take_rows, typicality
from hssal_ray.query.rowsource import is_row_source

__all__ = ["RandomQuery", "EntropyQuery", "MarginQuery", "TypiClustQuery", "CoresetQuery", "BadgeQuery"]

logger = logging.getLogger(__name__)
_CHUNK = 8192
#: TypiClust's most k-means clusters (its reference implementation's ``MAX_NUM_CLUSTERS``)
MAX_CLUSTERS = 500


@register("random")
class RandomQuery(QueryStrategy):
    """Uniformly random rows (seeded by ``random_state``)."""

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        avail = self._validate(pool, budget)
        self.info_ = {"pick_coarse_cluster": np.full(budget, -1, dtype=np.int64)}
        return self._finish(pool, self._rng().choice(avail, size=budget, replace=False), budget)


class ScoreRankQuery(QueryStrategy):
    """Template: the ``budget`` rows with the highest ``u_<score_name>`` (ties: lower row first)."""

    score_name: ClassVar[str] = ""

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        avail = self._validate(pool, budget)
        u = pool.uncertainty(self.score_name)[avail]
        self.info_ = {"pick_coarse_cluster": np.full(budget, -1, dtype=np.int64)}
        return self._finish(pool, avail[top_k(u, budget, avail)], budget)


@register("entropy")
class EntropyQuery(ScoreRankQuery):
    """Top-B predictive entropy."""

    score_name: ClassVar[str] = "entropy"


@register("margin")
class MarginQuery(ScoreRankQuery):
    """Top-B margin uncertainty ``1 - (p_(1) - p_(2))``."""

    score_name: ClassVar[str] = "margin"


@register("typiclust")
class TypiClustQuery(QueryStrategy):
    """TypiClust: k-means, then the most typical row of each of the largest clusters without labels.

    Without labeled rows, k = budget over the pool. With labeled rows (``pool.exclude``), the labeled
    and unlabeled rows are clustered together into ``|L| + budget`` clusters and the clusters that
    already hold a labeled row are skipped (used only if too few uncovered clusters remain).

    Typicality is TypiClust's ``1 / mean distance to the k nearest neighbours``, computed inside
    each cluster. If k-means leaves fewer non-empty clusters than the budget (duplicates), the
    remaining picks are the next most typical rows of the largest clusters, round-robin.

    At archive scale (a 2% cold start of 1M images is 20,000 clusters over 1M rows, hours of
    k-means on a CPU) two limits apply, as in TypiClust's reference implementation and faiss'
    default: at most ``max_clusters`` clusters (500 there; more picks than clusters go
    round-robin, as above), fitted on a seeded sample of :data:`FIT_ROWS_PER_CENTROID` rows per
    cluster when the pool holds more, then every row assigned in one streamed pass. Below both
    limits (every benchmark of this repository) the selection is the plain one.

    Args:
        kmeans_backend: k-means backend (see :func:`~hssal_ray.query.backends.make_kmeans`).
        kmeans_iters: Lloyd iterations.
        n_neighbors: k of the typicality.
        max_clusters: most k-means clusters.
        random_state: seed.

    Attributes:
        info_: ``pick_cluster`` (budget,) flat cluster of each pick, ``seconds``.
    """

    requires_embeddings: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, Any]] = {"kmeans_backend": BACKENDS}

    def __init__(
        self,
        kmeans_backend: str = "auto",
        kmeans_iters: int = 20,
        n_neighbors: int = 20,
        max_clusters: int = MAX_CLUSTERS,
        random_state: int | None = None,
    ) -> None:
        self.kmeans_backend = kmeans_backend
        self.kmeans_iters = kmeans_iters
        self.n_neighbors = n_neighbors
        self.max_clusters = max_clusters
        self.random_state = random_state

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        t0 = time.perf_counter()
        avail = self._validate(pool, budget)
        emb = pool.embeddings
        n = len(pool)
        labeled = np.setdiff1d(np.arange(n), avail, assume_unique=True)
        # TypiClust: cluster labeled + unlabeled rows (every pool row) into |L| + B clusters, at most
        # max_clusters, and take the most typical row of the largest clusters that hold no labeled row
        k = min(budget + labeled.size, n, int(self.max_clusters))
        rng = self._rng()
        seed = int(rng.integers(2**31 - 1))
        km = make_kmeans(
            self.kmeans_backend, n_clusters=k, max_iter=int(self.kmeans_iters), random_state=seed
        )
        n_fit = FIT_ROWS_PER_CENTROID * k
        if n <= n_fit:  # a row source (the cold start's features) is read whole: every backend takes arrays
            X = np.asarray(emb) if is_row_source(emb) else emb
            labels_all = np.asarray(km.fit(X).labels_, dtype=np.int64)
            del X
        else:  # fit on a seeded sample, then one streamed pass assigns every row
            km.fit(take_rows(emb, np.sort(rng.choice(n, size=n_fit, replace=False))))
            labels_all, _ = assign_chunked(emb, km.cluster_centers_)
        t_fit = time.perf_counter()
        sizes = np.bincount(labels_all, minlength=k)
        covered = np.zeros(k, dtype=bool)
        if labeled.size:
            covered[labels_all[labeled]] = True  # rows == arange(n): labels_all is indexed by pool row
            labels = labels_all[avail]
        else:
            labels = labels_all
        avail_sizes = np.bincount(labels, minlength=k)
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(avail_sizes)])
        within = np.empty(avail.size, dtype=np.int64)  # rank of each row inside its cluster
        for c in np.flatnonzero(avail_sizes):
            members = order[starts[c] : starts[c + 1]]
            typ = typicality(take_rows(emb, avail[members]), self.n_neighbors)
            within[members[np.lexsort((members, -typ))]] = np.arange(members.size)
        # tier 0: the most typical row of each uncovered cluster; then round-robin over all clusters
        tier = np.where(covered[labels] | (within > 0), within + 1, 0)
        key = np.lexsort((np.arange(avail.size), labels, -sizes[labels], tier))
        chosen = key[:budget]
        self.info_ = {
            "pick_cluster": labels[chosen],
            "pick_coarse_cluster": np.full(budget, -1, dtype=np.int64),
            "seconds": {"kmeans": t_fit - t0, "total": time.perf_counter() - t0},
        }
        return self._finish(pool, avail[chosen], budget)


def _row_norms_sq(Xt: torch.Tensor) -> torch.Tensor:
    out = torch.empty(Xt.shape[0], dtype=torch.float32, device=Xt.device)
    for s in range(0, Xt.shape[0], _CHUNK):
        xb = Xt[s : s + _CHUNK].float()
        out[s : s + xb.shape[0]] = (xb * xb).sum(1)
    return out


def _dots(Xt: torch.Tensor, c: torch.Tensor, out: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``out[i] = X[i] . c`` in float32, streaming X in chunks through ``buf``."""
    n = Xt.shape[0]
    for s in range(0, n, buf.shape[0]):
        m = min(buf.shape[0], n - s)
        if Xt.dtype == torch.float32:
            torch.mv(Xt[s : s + m], c, out=out[s : s + m])
        else:
            buf[:m].copy_(Xt[s : s + m])
            torch.mv(buf[:m], c, out=out[s : s + m])
    return out


@register("coreset")
class CoresetQuery(QueryStrategy):
    """K-center greedy (Sener & Savarese): repeatedly pick the row farthest from all centres.

    The labeled (excluded) rows are the initial centres; without any, the first pick is a seeded
    random available row. Each pick costs one chunked pass over the embeddings (float32 blocks).

    Args:
        random_state: seed of the first pick when nothing is labeled.
    """

    requires_embeddings: ClassVar[bool] = True

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        avail = self._validate(pool, budget)
        Xt = _to_torch(pool.embeddings)
        n = Xt.shape[0]
        sq = _row_norms_sq(Xt)
        buf = torch.empty((min(_CHUNK, n), Xt.shape[1]), dtype=torch.float32, device=Xt.device)
        dots = torch.empty(n, dtype=torch.float32, device=Xt.device)
        mind = torch.full((n,), float("inf"), dtype=torch.float32, device=Xt.device)
        labeled = np.setdiff1d(np.arange(n), avail, assume_unique=True)
        for s in range(0, labeled.size, 256):  # distance to the labeled set, 256 centres at a time
            C = torch.from_numpy(take_rows(pool.embeddings, labeled[s : s + 256])).to(Xt.device)
            cn = (C * C).sum(1)
            for r in range(0, n, _CHUNK):
                xb = Xt[r : r + _CHUNK].float()
                d2 = torch.addmm(cn, xb, C.T, alpha=-2.0).add_(sq[r : r + _CHUNK, None]).amin(1)
                torch.minimum(mind[r : r + _CHUNK], d2, out=mind[r : r + _CHUNK])
        if labeled.size:
            mind[torch.from_numpy(labeled).to(Xt.device)] = -float("inf")
        picks = []
        nxt = int(self._rng().choice(avail)) if labeled.size == 0 else int(torch.argmax(mind))
        for _ in range(budget):
            picks.append(nxt)
            c = Xt[nxt].float()
            _dots(Xt, c, dots, buf)
            torch.minimum(mind, (sq - 2.0 * dots + float(c @ c)).clamp_(min=0), out=mind)
            mind[nxt] = -float("inf")
            nxt = int(torch.argmax(mind))
        self.info_ = {"pick_coarse_cluster": np.full(budget, -1, dtype=np.int64)}
        return self._finish(pool, np.asarray(picks, dtype=np.int64), budget)


@register("badge")
class BadgeQuery(QueryStrategy):
    """BADGE: k-means++ seeding on gradient embeddings ``g_i = (p_i - onehot(argmax p_i)) ⊗ h_i``.

    The (n, C*d) gradient embeddings are never built: with ``a_i = p_i - onehot``,
    ``||g_i - g_j||^2 = ||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 (a_i . a_j)(h_i . h_j)``, so
    each D^2-sampling step is one chunked pass over the embeddings and one over ``a`` (n, C).
    The first centre is the largest gradient norm (as the reference implementation).

    Args:
        random_state: seed of the D^2 sampling.
    """

    requires_embeddings: ClassVar[bool] = True

    def __init__(self, random_state: int | None = None) -> None:
        self.random_state = random_state

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        avail = self._validate(pool, budget)
        if pool.probs is None:
            raise DataError("badge needs class probabilities (pool.probs)")
        rng = self._rng()
        Ht = _to_torch(pool.embeddings)
        n = Ht.shape[0]
        P = torch.from_numpy(np.ascontiguousarray(pool.probs, dtype=np.float32)).to(Ht.device)
        A = P.clone()
        A[torch.arange(n, device=A.device), P.argmax(1)] -= 1.0
        an = (A * A).sum(1)
        hn = _row_norms_sq(Ht)
        gn = an * hn  # ||g_i||^2
        buf = torch.empty((min(_CHUNK, n), Ht.shape[1]), dtype=torch.float32, device=Ht.device)
        hdots = torch.empty(n, dtype=torch.float32, device=Ht.device)
        allowed = torch.zeros(n, dtype=torch.bool, device=Ht.device)
        allowed[torch.from_numpy(avail).to(Ht.device)] = True
        d2 = torch.full((n,), float("inf"), dtype=torch.float64, device=Ht.device)
        nxt = int(torch.argmax(torch.where(allowed, gn, torch.full_like(gn, -1.0))))
        picks = []
        for _ in range(budget):
            picks.append(nxt)
            allowed[nxt] = False
            _dots(Ht, Ht[nxt].float(), hdots, buf)
            cross = (A @ A[nxt]) * hdots
            dist = (gn + gn[nxt] - 2.0 * cross).clamp_(min=0).double()
            torch.minimum(d2, dist, out=d2)
            w = torch.where(allowed, d2, torch.zeros_like(d2)).cpu().numpy()
            if len(picks) == budget:
                break
            tot = w.sum()
            if tot > 0 and math.isfinite(tot):
                nxt = int(rng.choice(n, p=w / tot))
            else:  # only duplicates of the centres remain: uniform over what is left
                nxt = int(rng.choice(np.flatnonzero(allowed.cpu().numpy())))
        self.info_ = {"pick_coarse_cluster": np.full(budget, -1, dtype=np.int64)}
        return self._finish(pool, np.asarray(picks, dtype=np.int64), budget)
