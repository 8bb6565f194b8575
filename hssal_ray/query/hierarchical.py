"""HAL: hierarchical active learning (progressive clustering over embeddings and uncertainty).

``HierarchicalQuery`` (``hal``), (docs/ARCHITECTURE.md "Active learning"):

1. coarse k-means of the pool embeddings into K1 clusters, fit on a subsample (``coarse_fit_sample``,
   at most 256 rows per centroid),
   then one chunked assignment pass over every row (the floor of the cost);
2. budget per coarse cluster proportional to its uncertainty mass (:func:`allocate_budget`);
3. per coarse cluster, the ``ceil(r * b_k)`` most uncertain rows are the candidates;
4. fine clustering of the candidates into ``b_k`` clusters (k-means, or spectral on a kNN graph);
5. one pick per fine cluster: the most uncertain (or the most typical) member, or the one whose
   label is expected to settle the most of the graph (``eer``, :mod:`hssal_ray.query.eer`).

Steps 3-5 of each coarse cluster are independent: they run in :func:`_select_in_cluster`, a pure,
picklable function mapped over :class:`ClusterTask` objects with ``map_fn`` (builtin ``map`` by
default; the Ray runner passes a Ray-task map). ``FlatHierarchicalQuery`` (``hal_flat``) is the
one-level reading: top ``r * B`` by uncertainty over the pool, fine clustering into ``B``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch

from hssal_ray.config.loop import (
    MASS_WEIGHINGS,
    MAX_ALLOC_TEMPER,
    MIN_COARSE_FIT_SAMPLE,
    coarse_fit_clashes,
    cover_scale_clashes,
)
from hssal_ray.errors import BudgetError, ConfigError, DataError
from hssal_ray.query.backends import (
    BACKENDS,
    FIT_ROWS_PER_CENTROID,
    assign_chunked,
    make_kmeans,
    resolve_backend,
)
from hssal_ray.query.base import Pool, QueryStrategy, find_rows, nonfinite_rows, register, top_k
from hssal_ray.query.eer import MAX_CONTEXT, context_rows, eer_gain
from hssal_ray.query.hal_steps import (
    DENSITY_REFERENCE_ROWS,
    TYPICAL_NEIGHBORS,
    ClusterTask,
    _select_in_cluster,
    _top_candidates,
    candidate_rank,
    coverage,
    cross_cluster_duplicates,
    fine_heads,
    kth_neighbor_distance,
    merge_heads,
    reference_typicality,
    take_rows,
    typicality,
)
from hssal_ray.query.rowsource import is_row_source
from hssal_ray.query.uncertainty import UNCERTAINTIES

__all__ = [
    "HierarchicalQuery",
    "FlatHierarchicalQuery",
    "ClusterTask",
    "allocate_budget",
    "auto_coarse_k",
    "typicality",
    "take_rows",
    "flip_rates",
    "label_impurity",
    "round_robin_budget",
    "class_groups",
]

logger = logging.getLogger(__name__)
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


#: auto K1 aims at this many picks per coarse cluster on average (so fine clustering has work).
PICKS_PER_COARSE = 3
#: auto K1 never exceeds this: the assignment pass costs n * K1 * d multiply-adds.
MAX_AUTO_COARSE_K = 64
#: ``fine_space: gradient``/``late``: the most bytes one fine problem's (m, C * d) float32 gradient
#: embeddings may take (a coarse cluster's share of a 1M-image round is ~1k candidates: ~0.1 GB at C = 21,
#: d = 1280; the flat variant's one problem holds every candidate and can pass it)
MAX_GRADIENT_BYTES = 2 * 1024**3


def auto_coarse_k(n_available: int, budget: int, n_classes: int = 0) -> int:
    """Default number of coarse clusters: ``ceil(budget / 3)`` clipped to ``[2, 64]``, <= budget, <= pool.

    With ``n_classes`` (HAL's ``coarse_min_classes``) K1 is at least the number of classes (still at
    most 64, the budget and the pool): a coarse level with fewer clusters than the label space has
    classes must merge some of them.

    Every non-empty coarse cluster gets at least one pick, so K1 sets how many distinct regions the
    batch is guaranteed to touch (coverage) while the uncertainty-proportional allocation decides
    the rest; ~3 picks per coarse cluster leaves the fine level room for diversity. The cap keeps
    the assignment pass near its floor on large pools. See the K1 sweep (time, cluster coverage,
    mean uncertainty) in ``benchmarks/results/query_speed.md``.
    """
    k = min(max(2, math.ceil(budget / PICKS_PER_COARSE), int(n_classes)), MAX_AUTO_COARSE_K)
    return int(max(1, min(k, budget, n_available)))


def class_groups(pool: Pool, how: str) -> tuple[np.ndarray, int]:
    """The coarse level read from the model instead of k-means: (n,) group of every row, and K1.

    ``how="predicted"``: the row's predicted class (``pool.pred``, else the argmax of
    ``pool.probs``); ``"confusion"``: the unordered pair of its two most probable classes (needs
    ``pool.probs``; ties between classes go to the lower index). Groups are numbered 0..K1-1 in the
    order of their class (pair) index, and only groups that hold a row exist.

    Raises:
        DataError: the pool lacks what ``how`` needs.
    """
    if how == "predicted" and pool.pred is not None:
        key = np.asarray(pool.pred, dtype=np.int64)
    else:
        if pool.probs is None:
            need = "a 'pred' or 'probs' column" if how == "predicted" else "a 'probs' column"
            raise DataError(f"query.coarse_by={how} needs {need} in the scores file")
        p = np.asarray(pool.probs)
        if how == "predicted":
            key = p.argmax(axis=1).astype(np.int64)
        else:
            if p.shape[1] < 2:
                raise DataError(f"query.coarse_by=confusion needs >= 2 classes, the probs have {p.shape[1]}")
            top2 = np.argsort(-p, axis=1, kind="stable")[:, :2].astype(np.int64)
            key = top2.min(axis=1) * p.shape[1] + top2.max(axis=1)
    if key.shape != (len(pool),):
        raise DataError(f"the pool's predictions have shape {key.shape}, expected ({len(pool)},)")
    _, groups = np.unique(key, return_inverse=True)
    groups = groups.astype(np.int64).reshape(-1)
    return groups, int(groups.max(initial=-1) + 1)


def _nonfinite_error(pool: Pool, bad: np.ndarray) -> DataError:
    """The error for pool rows ``bad`` whose embeddings hold NaN or inf (the first five, with their ids)."""
    return DataError(
        f"embeddings have NaN or inf in {bad.size} rows: {bad[:5].tolist()} "
        f"(ids {[str(pool.ids[r]) for r in bad[:5]]})"
    )


def _largest_remainder(q: np.ndarray, total: int, tiebreak: np.ndarray) -> np.ndarray:
    fl = np.floor(q + 1e-9).astype(np.int64)
    rem = int(total - fl.sum())
    if rem > 0:
        frac = q - fl
        order = np.lexsort((np.arange(len(q)), -tiebreak, -frac))
        fl[order[:rem]] += 1
    return fl


def allocate_budget(mass: np.ndarray, counts: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` over clusters proportionally to their uncertainty mass.

    ``b_k = clip(lambda * mass_k, 1, counts_k)`` for every non-empty cluster, with ``lambda`` such
    that the quotas sum to ``budget`` (leftovers from capped clusters are redistributed), then
    largest-remainder rounding (ties: larger mass, then lower index). If the budget is smaller
    than the number of non-empty clusters, the ``budget`` clusters with the largest mass get one
    each. Clusters with zero mass get their floor of one; budget the positive-mass clusters cannot
    absorb goes to the zero-mass ones in proportion to their size. All-zero mass -> by size. Masses
    below 1e-12 of the largest count as zero.

    Args:
        mass: (K,) non-negative uncertainty mass per cluster.
        counts: (K,) available rows per cluster (the caps).
        budget: total picks, ``0 <= budget <= counts.sum()``.

    Returns:
        (K,) int64 picks per cluster, summing to ``budget``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    mass = np.where(counts > 0, np.maximum(np.nan_to_num(np.asarray(mass, dtype=np.float64)), 0.0), 0.0)
    if budget > counts.sum() or budget < 0:
        raise BudgetError(f"budget {budget} must be between 0 and the {int(counts.sum())} available rows")
    b = np.zeros(len(counts), dtype=np.int64)
    nonempty = np.flatnonzero(counts > 0)
    if budget == 0:
        return b
    if budget < nonempty.size:
        order = np.lexsort((nonempty, -counts[nonempty], -mass[nonempty]))
        b[nonempty[order[:budget]]] = 1
        return b
    if mass.sum() <= 0:
        mass = counts.astype(np.float64)
    mass = mass / mass.max()
    mass[mass < 1e-12] = 0.0  # negligible mass (also keeps lambda below overflow)
    lo = (counts > 0).astype(np.float64)
    hi = counts.astype(np.float64)
    pos = mass > 0
    saturated = hi[pos].sum() + lo[~pos].sum()
    if saturated <= budget:  # positive-mass clusters all at their cap; the rest by size
        b[pos] = counts[pos]
        zero = np.flatnonzero(~pos & (counts > 0))
        rest = budget - int(b.sum())
        if zero.size:
            b[zero] = allocate_budget(counts[zero].astype(np.float64), counts[zero], rest)
        return b
    lam_lo, lam_hi = 0.0, float(np.max(hi[pos] / mass[pos]))
    for _ in range(200):  # bisection on the monotone piecewise-linear sum
        lam = 0.5 * (lam_lo + lam_hi)
        if np.clip(lam * mass, lo, hi).sum() < budget:
            lam_lo = lam
        else:
            lam_hi = lam
    q = np.clip(lam_hi * mass, lo, hi)
    q *= budget / q.sum()  # remove bisection residue before rounding
    b = _largest_remainder(np.minimum(q, hi), budget, mass)
    over = b > counts  # float-safety: never above a cap (redistribute to the largest remainders)
    while over.any():
        extra = int((b - counts)[over].sum())
        b[over] = counts[over]
        room = np.flatnonzero(b < counts)
        order = room[np.lexsort((room, -mass[room], -(q[room] - b[room])))]
        b[order[:extra]] += 1
        over = b > counts
    return b


def round_robin_budget(counts: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` over clusters in turn, the smallest first (Cluster-Margin's round robin).

    Citovsky et al. (2021, "Batch Active Learning at Scale") cluster the pool once, keep the
    ``k_m * B`` lowest-margin rows, and take one from each cluster in turn, clusters ordered by
    their number of candidates, ascending, until the batch is full: every cluster that holds
    candidates gets an equal share, capped by what it holds (water-filling), and the remainder
    goes to the smallest clusters. The mass allocation of :func:`allocate_budget` instead follows
    where the candidates are; this one spreads the batch over the regions they come from.

    Args:
        counts: (K,) candidates per cluster (the caps).
        budget: total picks, ``0 <= budget <= counts.sum()``.

    Returns:
        (K,) int64 picks per cluster, summing to ``budget``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if budget > counts.sum() or budget < 0:
        raise BudgetError(f"budget {budget} must be between 0 and the {int(counts.sum())} available rows")
    if budget == 0:
        return np.zeros(len(counts), dtype=np.int64)
    level = 0  # full turns every cluster with room can take: sum(min(counts, level)) <= budget
    for c in np.unique(counts[counts > 0]):
        if np.minimum(counts, c).sum() > budget:
            break
        level = int(c)
    room = counts > level
    level += (budget - int(np.minimum(counts, level).sum())) // max(int(room.sum()), 1)
    b = np.minimum(counts, level)
    rest = budget - int(b.sum())
    if rest:  # one more turn, smallest clusters first (ties: lower index)
        open_ = np.flatnonzero(counts > b)
        b[open_[np.lexsort((open_, counts[open_]))][:rest]] += 1
    return b


def flip_rates(labels: np.ndarray, flips: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's weak/strong flip rate relative to the pool's, shrunk toward 1.

    ``((f_k + 1) / (n_k + 1 / rbar)) / rbar`` with ``f_k`` flips among the ``n_k`` rows of cluster
    ``k`` and ``rbar`` the pool's rate: a prior worth one flip (``1 / rbar`` rows at the pool's
    rate). Flips are rare (a round's median: 0.7% of UCM's pool rows, 2.3% of SIRI-WHU's), so a
    prior of a fixed number of rows would let a cluster's one or two flips, or none, decide its
    weight; with one flip's worth, a cluster moves only as far as its flips outnumber one, and on
    a large pool (``n_k >> 1 / rbar``) the measured rates are used as they are. No flips anywhere
    (or no rows): all ones.

    Args:
        labels: (n,) int cluster of each row, in ``[0, k)``.
        flips: (n,) bool, the row's weak and strong views predict different classes (or any
            non-negative per-row amount, e.g. the disagreement itself: the prior is then worth 1).
        k: number of clusters.

    Returns:
        (k,) float64 weights (1 = the pool's rate).
    """
    n = np.bincount(labels, minlength=k).astype(np.float64)
    f = np.bincount(labels, weights=np.asarray(flips, dtype=np.float64), minlength=k)
    return _relative_rates(f, n)


def _relative_rates(f: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``((f + 1) / (n + 1 / rbar)) / rbar``, ``rbar = sum(f) / sum(n)``: each group's rate of
    ``f`` events in ``n`` rows relative to the whole's, shrunk toward 1 by a prior worth one event;
    all ones when nothing happened anywhere (or there are no rows)."""
    if n.sum() == 0 or f.sum() == 0:
        return np.ones(n.shape, dtype=np.float64)
    rbar = f.sum() / n.sum()
    return ((f + 1.0) / (n + 1.0 / rbar)) / rbar


def label_impurity(labels: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's share of labeled rows outside its majority class, relative to the pool's.

    Dasgupta & Hsu's hierarchical sampling (ICML 2008) spends labels where a cluster's labels show
    it is not pure: a cluster whose labels are all one class is settled by label propagation,
    one whose labels disagree holds a decision boundary. With ``n_k`` labeled rows in cluster
    ``k`` and ``m_k`` of them outside its majority class, the weight is ``m_k / n_k`` relative to
    the pool's ``sum(m) / sum(n)``, shrunk as :func:`flip_rates` is (a prior worth one minority
    label), so a cluster with no or few labels stays near 1 and one label decides little. No
    minority label anywhere (every cluster pure, or no labels): all ones.

    Args:
        labels: (m,) int coarse cluster of each labeled row, in ``[0, k)``.
        classes: (m,) int the oracle's class of each labeled row (>= 0).
        k: number of clusters.

    Returns:
        (k,) float64 weights (1 = the pool's impurity).
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    n = np.bincount(labels, minlength=k).astype(np.float64)
    if labels.size == 0:
        return np.ones(k, dtype=np.float64)
    c = int(classes.max()) + 1
    per_class = np.bincount(labels * c + classes, minlength=k * c).reshape(k, c)
    minority = n - per_class.max(axis=1)
    return _relative_rates(minority, n)


def _reference_sample(rows: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """``rows`` (sorted), or a seeded sample of :data:`DENSITY_REFERENCE_ROWS` of them above that,
    and TypiClust's 20 neighbours scaled by the sample's share (at least 1)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size <= DENSITY_REFERENCE_ROWS:
        return rows, TYPICAL_NEIGHBORS
    nn = max(1, round(TYPICAL_NEIGHBORS * DENSITY_REFERENCE_ROWS / rows.size))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=DENSITY_REFERENCE_ROWS, replace=False)), nn


def _summary(rules: list[str]) -> str:
    """One word for the round's pick rules: the rule when every cluster used it, else ``mixed``."""
    return rules[0] if len(set(rules)) == 1 else "mixed"


class _HALBase(QueryStrategy):
    requires_embeddings: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "uncertainty": UNCERTAINTIES,
        "coarse_k": lambda v: isinstance(v, int | np.integer) and v >= 0,
        "candidate_ratio": lambda v: isinstance(v, int | float) and v >= 1.0,
        "late_candidate_ratio": lambda v: isinstance(v, int | float) and (v == 0 or v >= 1.0),
        "fine_method": ("kmeans", "spectral"),
        "fine_space": ("embedding", "gradient", "late"),
        "pick": ("uncertain", "typical", "balanced", "eer", "cover", "auto", "auto_local"),
        "early_pick": ("typical", "cover"),
        "cover_by": ("rows", "uncertainty"),
        "typical_until": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        "coarse_fit_sample": lambda v: isinstance(v, int | np.integer) and v >= MIN_COARSE_FIT_SAMPLE,
        "kmeans_backend": BACKENDS,
        "kmeans_iters": lambda v: isinstance(v, int | np.integer) and v >= 1,
        "ssl_aware": (True, False),
        "alloc_temper": lambda v: isinstance(v, int | float) and 0.0 <= v <= MAX_ALLOC_TEMPER,
        "cover_labeled": (True, False),
        "cover_scale": ("cluster", "flat"),
        "coarse_fit": ("pool", "candidates"),
        "alloc_over": ("pool", "candidates", "global", "auto"),
        "late_uncertainty": ("same", *UNCERTAINTIES),
        "late_pick": ("uncertain", "eer"),
        "boundary_check": (True, False, "late"),
        "copy_check": (True, False, "late"),
        "typical_scale": ("cluster", "flat", "global"),
        "typical_over": ("candidates", "pool"),
        "alloc_flips": (True, False, "mass"),
        "alloc_purity": (True, False),
        "coarse_by": ("kmeans", "predicted", "confusion"),
        "coarse_min_classes": (True, False),
        "alloc_round_robin": (True, False),
        "map_fn": lambda v: v is None or callable(v),
    }

    def __init__(
        self,
        uncertainty: str = "badge",
        coarse_k: int = 0,
        candidate_ratio: float = 3.0,
        late_candidate_ratio: float = 0.0,
        fine_method: str = "kmeans",
        pick: str = "uncertain",
        coarse_fit_sample: int = 100_000,
        kmeans_backend: str = "auto",
        kmeans_iters: int = 20,
        ssl_aware: bool = False,
        alloc_temper: float = 1.0,
        typical_until: float = 3.0,
        cover_labeled: bool = False,
        cover_scale: str = "cluster",
        coarse_fit: str = "pool",
        alloc_over: str = "pool",
        late_uncertainty: str = "same",
        late_pick: str = "uncertain",
        early_pick: str = "typical",
        cover_by: str = "rows",
        boundary_check: bool | str = False,
        copy_check: bool | str = False,
        typical_scale: str = "cluster",
        typical_over: str = "candidates",
        alloc_flips: bool | str = False,
        alloc_purity: bool = False,
        coarse_by: str = "kmeans",
        coarse_min_classes: bool = False,
        alloc_round_robin: bool = False,
        fine_space: str = "embedding",
        random_state: int | None = None,
        map_fn: MapFn | None = None,
    ) -> None:
        self.uncertainty = uncertainty
        self.coarse_k = coarse_k
        self.candidate_ratio = candidate_ratio
        self.late_candidate_ratio = late_candidate_ratio
        self.fine_method = fine_method
        self.pick = pick
        self.coarse_fit_sample = coarse_fit_sample
        self.kmeans_backend = kmeans_backend
        self.kmeans_iters = kmeans_iters
        self.ssl_aware = ssl_aware
        self.alloc_temper = alloc_temper  # hal only (hal_flat has no coarse level to allocate over)
        self.typical_until = typical_until
        self.cover_labeled = cover_labeled
        self.cover_scale = cover_scale  # hal only, as alloc_temper
        self.coarse_fit = coarse_fit  # hal only, as alloc_temper
        self.alloc_over = alloc_over  # hal only, as alloc_temper
        self.late_uncertainty = late_uncertainty
        self.late_pick = late_pick
        self.early_pick = early_pick
        self.cover_by = cover_by
        self.boundary_check = boundary_check  # hal only, as alloc_temper
        self.copy_check = copy_check
        self.typical_scale = typical_scale  # hal only, as alloc_temper
        self.typical_over = typical_over
        self.alloc_flips = alloc_flips  # hal only, as alloc_temper
        self.alloc_purity = alloc_purity  # hal only, as alloc_temper
        self.coarse_by = coarse_by  # hal only, as alloc_temper
        self.coarse_min_classes = coarse_min_classes  # hal only, as alloc_temper
        self.alloc_round_robin = alloc_round_robin  # hal only, as alloc_temper
        self.fine_space = fine_space
        self.random_state = random_state
        self.map_fn = map_fn

    @staticmethod
    def _fine_backend(coarse_backend: str) -> str:
        # Fine problems are tiny and run in (possibly GPU-less) worker tasks: always a CPU backend.
        if coarse_backend in ("faiss", "torch", "sklearn"):
            return coarse_backend
        return "faiss" if importlib.util.find_spec("faiss") is not None else "torch"

    def pick_rule(self, pool: Pool) -> str:
        """The pick rule this round: ``pick``, or for ``auto`` the budget regime's rule.

        ``auto`` follows TypiClust's finding (Hacohen et al., 2022): with very few labels per class
        the model's uncertainty is a poor guide and the most *typical* sample of each fine cluster
        is the better query; once the labeled set holds ``typical_until`` labels per class on
        average (labeled rows of the pool / number of classes) ``late_pick`` is (the most
        *uncertain* one, or ``eer``).
        """
        if self.pick not in ("auto", "auto_local"):
            return self.pick
        n_labeled = int(np.count_nonzero(pool.exclude)) if pool.exclude is not None else 0
        n_classes = int(np.shape(pool.probs)[1]) if pool.probs is not None else 0
        if n_classes == 0:
            return self.early_pick
        return self.early_pick if n_labeled < self.typical_until * n_classes else self.late_pick

    def ranking(self, pool: Pool) -> str:
        """The uncertainty this round ranks by: ``late_uncertainty`` once ``auto`` picks uncertain."""
        return self._ranking_for(self.pick_rule(pool))

    def _past_switch(self, rule: str) -> bool:
        """Whether ``rule`` is ``auto``'s late rule (where the ``late_*`` settings apply)."""
        return self.pick in ("auto", "auto_local") and rule != self.early_pick

    def _ratio_for(self, rule: str) -> float:
        """The candidate ratio r this round: ``late_candidate_ratio`` once ``auto`` picks late."""
        late = self.late_candidate_ratio
        return float(late if late and self._past_switch(rule) else self.candidate_ratio)

    @staticmethod
    def _checks(setting: bool | str, rule: str) -> bool:
        """Whether a ``True``/``"late"`` check setting runs in a round whose pick rule is ``rule``."""
        return setting is True or (setting == "late" and rule not in ("typical", "cover"))

    def _spares(
        self,
        u: np.ndarray,
        avail: np.ndarray,
        conf: np.ndarray | None,
        budget: int,
        ratio: float,
        cands: np.ndarray,
    ) -> np.ndarray:
        """``copy_check``'s spare rows: the pool's ``ceil(candidate_ratio * B)`` highest-priority rows
        that are not candidates (priority order); none while this round's r is not below it."""
        m = int(min(math.ceil(max(self.candidate_ratio, ratio) * budget), avail.size))
        if m <= cands.size:
            return np.empty(0, dtype=np.int64)
        wide = _top_candidates(u[avail], avail, None if conf is None else conf[avail], m)
        return wide[~np.isin(wide, cands)]

    def _fine_probs(self, pool: Pool, rule: str) -> np.ndarray | None:
        """The pool's class probabilities when this round's fine level clusters gradients, else None."""
        on = {"embedding": False, "gradient": True, "late": "late"}[self.fine_space]
        if not self._checks(on, rule):
            return None
        if pool.probs is None:
            raise DataError(f"query.fine_space={self.fine_space} needs the class probabilities ('probs')")
        return np.asarray(pool.probs)

    def _ranking_for(self, rule: str) -> str:
        late = self.late_uncertainty
        return late if late != "same" and self._past_switch(rule) else self.uncertainty

    def _task(
        self,
        cluster: int,
        emb: Any,
        cand: np.ndarray,
        u: np.ndarray,
        b: int,
        backend: str,
        seed: int,
        pick: str,
        labeled: np.ndarray | None = None,
        gain: np.ndarray | None = None,
        n_neighbors: int = TYPICAL_NEIGHBORS,
        density: np.ndarray | None = None,
        cover: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
        probs: np.ndarray | None = None,
    ) -> ClusterTask:
        if probs is not None:  # fail before any fine problem is built, not inside a worker
            n_cls, dim = int(np.shape(probs)[1]), int(emb.shape[1])
            n_rows = cand.size + (0 if labeled is None else labeled.size)  # cover_labeled's rows join it
            n_bytes = 4 * n_rows * n_cls * dim
            if n_bytes > MAX_GRADIENT_BYTES:
                raise ConfigError(
                    f"query.fine_space={self.fine_space}: one fine problem's gradient embeddings would "
                    f"take {n_bytes / 1024**3:.1f} GiB ({n_rows} rows x {n_cls} classes "
                    f"x {dim} dims, limit {MAX_GRADIENT_BYTES / 1024**3:.0f} GiB); use "
                    "fine_space: embedding, or strategy hal, whose fine problems are one coarse cluster each"
                )
        return ClusterTask(
            cluster=cluster,
            emb=take_rows(emb, cand),
            u=u[cand],
            n_picks=int(b),
            fine_method=self.fine_method,
            pick=pick,
            backend=backend,
            max_iter=int(self.kmeans_iters),
            seed=int(seed),
            labeled=None if labeled is None or labeled.size == 0 else take_rows(emb, labeled),
            gain=gain,
            n_neighbors=int(n_neighbors),
            density=density,
            cover=None if cover is None else cover[0],
            covered=None if cover is None else cover[1],
            cover_weight=None if cover is None else cover[2],
            probs=None if probs is None else np.asarray(probs[cand], dtype=np.float32),
            labeled_probs=(
                None
                if probs is None or labeled is None or labeled.size == 0
                else np.asarray(probs[labeled], dtype=np.float32)
            ),
        )

    def _pool_density(self, emb: Any, cand: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
        """``typical_over: pool``: typicality of the candidates ``cand`` among the pool rows ``rows``.

        TypiClust measures a sample's typicality in the data, not among the candidates: this is the
        density of the pool around each candidate (its 20 nearest rows of ``rows``, labeled rows
        included, its own left out). Above :data:`DENSITY_REFERENCE_ROWS` rows a seeded sample of
        that many stands for them, with k scaled by its share (at least 1). HAL passes the rows of a
        candidate's coarse cluster, so the cost is ``sum_k m_k * N_k`` instead of ``M * N``.
        """
        rows, nn = _reference_sample(rows, seed)
        pos, found = find_rows(rows, cand)
        self_pos = np.where(found, pos, -1)
        return reference_typicality(take_rows(emb, cand), take_rows(emb, rows), self_pos, nn)

    def _cover_radius(self, emb: Any, n: int, seed: int) -> float:
        """``pick: cover``: the ball's radius, the median distance from a pool row (labeled ones
        included) to its 20th nearest row; on a seeded sample of :data:`DENSITY_REFERENCE_ROWS` rows
        above that, with k scaled by its share, as for the density (:meth:`_pool_density`). The
        ball of a typical row holds about the 20 rows TypiClust measures its density over."""
        rows, nn = _reference_sample(np.arange(n, dtype=np.int64), seed)
        return float(np.median(kth_neighbor_distance(take_rows(emb, rows), nn)))

    def _coverage(
        self,
        emb: Any,
        cand: np.ndarray,
        rows: np.ndarray,
        labeled: np.ndarray,
        radius: float,
        seed: int,
        u: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``pick: cover``: the candidates' balls over ``rows`` (a coarse cluster's pool rows, or a
        seeded sample of :data:`DENSITY_REFERENCE_ROWS` of them), the part the ``labeled`` rows
        cover already (:func:`~hssal_ray.query.hal_steps.coverage`), and with ``cover_by:
        uncertainty`` each reference row's weight, its uncertainty ``u`` (None: rows count 1)."""
        ref, _ = _reference_sample(rows, seed)
        lab = take_rows(emb, labeled) if labeled.size else None
        cover, covered = coverage(take_rows(emb, cand), take_rows(emb, ref), lab, radius)
        weight = (
            None if self.cover_by == "rows" else np.maximum(np.nan_to_num(u[ref].astype(np.float64)), 0.0)
        )
        return cover, covered, weight

    def _labeled(self, pool: Pool) -> np.ndarray:
        return (
            np.flatnonzero(np.asarray(pool.exclude, dtype=bool)).astype(np.int64)
            if pool.exclude is not None
            else np.zeros(0, dtype=np.int64)
        )

    def _run(
        self, tasks: list[ClusterTask], step: Callable[[ClusterTask], Any] = _select_in_cluster
    ) -> list[np.ndarray]:
        fn = self.map_fn if self.map_fn is not None else map
        return [np.asarray(r, dtype=np.int64) for r in fn(step, tasks)]

    def _local_rules(self, pool: Pool, labels: np.ndarray, k1: int) -> list[str]:
        """``auto_local``: the ``auto`` rule applied inside each coarse cluster.

        Cluster k turns from typical to uncertain once its labeled rows reach its share of the
        ``typical_until * n_classes`` labels the global rule asks for: ``L_k >= typical_until *
        n_classes * N_k / N`` (``N_k`` rows of the cluster, labeled or not, ``N`` rows of the pool).
        Regions the labels already cover are refined at the decision boundary while regions they
        do not are explored with typical picks, in the same round. With one cluster this is ``auto``.
        """
        n_classes = int(np.shape(pool.probs)[1]) if pool.probs is not None else 0
        if n_classes == 0:
            return [self.early_pick] * k1
        sizes = np.bincount(labels, minlength=k1).astype(np.float64)
        ex = np.asarray(pool.exclude, dtype=bool) if pool.exclude is not None else np.zeros(len(pool), bool)
        n_lab = np.bincount(labels[ex], minlength=k1).astype(np.float64)
        need = self.typical_until * n_classes * sizes / max(len(pool), 1)
        return [self.late_pick if n_lab[k] >= need[k] else self.early_pick for k in range(k1)]

    def _eer_gains(
        self,
        pool: Pool,
        cands: list[np.ndarray],
        seed: int,
        labels: np.ndarray | None = None,
        clusters: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Expected error reduction of every candidate (:func:`hssal_ray.query.eer.eer_gain`).

        One graph over the whole pool (labeled rows included) while it has at most
        :data:`~hssal_ray.query.eer.MAX_CONTEXT` rows; above that one graph per candidate set, over
        the pool rows of its coarse cluster (``labels == clusters[i]``; the whole pool without
        ``labels``), each capped at that many rows (the candidates and a sample of the rest), so the
        cost grows with the pool, not its square.
        """
        if pool.probs is None:
            raise DataError("query.pick 'eer' needs the pool's class probabilities (the scores' 'probs')")
        probs = np.asarray(pool.probs, dtype=np.float32)
        free = ~np.asarray(pool.exclude, dtype=bool) if pool.exclude is not None else np.ones(len(pool), bool)
        rng = np.random.default_rng(seed)
        n = len(pool)
        if n <= MAX_CONTEXT:
            allc = np.concatenate(cands)
            gain = eer_gain(take_rows(pool.embeddings, np.arange(n)), probs, free, allc)
            return np.split(gain, np.cumsum([c.size for c in cands])[:-1])
        out = []
        for i, cand in enumerate(cands):
            whole = labels is None or clusters is None
            rows = np.arange(n) if whole else np.flatnonzero(labels == clusters[i])
            ctx = context_rows(rows, cand, MAX_CONTEXT, rng)
            pos = np.searchsorted(ctx, cand)
            out.append(eer_gain(take_rows(pool.embeddings, ctx), probs[ctx], free[ctx], pos))
        return out

    def _impurity(self, pool: Pool, labels: np.ndarray, k1: int) -> np.ndarray:
        """:func:`label_impurity` of the coarse clusters from the labeled rows' classes (``pool.labels``)."""
        lab = self._labeled(pool)
        if lab.size and pool.labels is None:
            raise DataError(
                "query.alloc_purity needs the labeled rows' classes (pool.labels); the loop sets them, "
                "python -m hssal_ray.query reads them from --exclude's 'label' column"
            )
        classes = np.asarray(pool.labels)[lab] if lab.size else np.zeros(0, dtype=np.int64)
        if (classes < 0).any():
            bad = lab[classes < 0][:5]
            raise DataError(
                f"query.alloc_purity: labeled rows without a class: ids {[str(pool.ids[r]) for r in bad]}"
            )
        return label_impurity(labels[lab], classes, k1)

    def _labeled_rows(self, pool: Pool) -> np.ndarray | None:
        """Labeled pool rows (``pool.exclude``) when ``cover_labeled`` is on, else None."""
        if not self.cover_labeled or pool.exclude is None:
            return None
        return self._labeled(pool)

    def _confident(self, pool: Pool) -> np.ndarray | None:
        return (
            np.asarray(pool.confident, dtype=bool) if self.ssl_aware and pool.confident is not None else None
        )


@register("hal")
class HierarchicalQuery(_HALBase):
    """Hierarchical (two-level) clustering query; see the module docstring.

    Args:
        uncertainty: which ``u_<name>`` score drives allocation, filtering and picks.
        coarse_k: number of coarse clusters; 0 = :func:`auto_coarse_k`.
        candidate_ratio: r; each coarse cluster keeps ``ceil(r * b_k)`` candidates.
        late_candidate_ratio: with ``pick="auto"``/``"auto_local"``: r in the rounds that pick
            ``late_pick`` (0 = ``candidate_ratio`` throughout); the flat variant reads it too.
        fine_method: ``"kmeans"`` or ``"spectral"`` (kNN affinity) at the fine level.
        fine_space: what the fine level clusters: the candidates' embeddings (``"embedding"``), or
            BADGE's gradient embeddings ``(p - onehot(argmax p)) ⊗ h``
            (:func:`~hssal_ray.query.hal_steps.gradient_embedding`; the paper's gradient-based
            fine level): ``"gradient"`` in every round, ``"late"`` only in rounds whose pick rule
            is not ``typical``/``cover`` (a model with a few labels per class has gradients that
            say little). Needs ``pool.probs``; densities, picks' order and the boundary check stay
            in the embedding space. The flat variant reads it too.
        pick: ``"uncertain"`` (most uncertain per fine cluster), ``"typical"`` (TypiClust density),
            ``"balanced"`` (best sum of the uncertainty rank and the typicality rank: information
            density without a scale), ``"eer"`` (the largest expected error reduction on the k-NN
            graph labels spread over, :mod:`hssal_ray.query.eer`), ``"cover"`` (no fine clustering:
            ProbCover's greedy max coverage among the candidates,
            :func:`~hssal_ray.query.hal_steps.greedy_cover`, balls over the coarse cluster's pool rows
            at the pool's median 20th-neighbour distance), or ``"auto"``: ``early_pick`` while the
            labeled set is small, ``late_pick`` after (:meth:`pick_rule`).
        typical_until: for ``pick="auto"``: labels per class (on average) from which picks are
            the most uncertain instead of the most typical.
        coarse_fit_sample: at most this many rows (and at most 256 per centroid) are used to fit the
            coarse k-means; all rows are then assigned.
        kmeans_backend: ``auto`` | ``torch`` | ``faiss`` | ``sklearn`` | ``cuml`` (coarse level).
        kmeans_iters: Lloyd iterations at both levels.
        ssl_aware: prefer rows not confidently pseudo-labeled (``pool.confident``) as candidates.
        alloc_temper: ``t`` in ``[0, 4]``: each coarse cluster's share of the budget is proportional
            to ``mass**t * size**(1 - t)``; 1 = by uncertainty mass (the paper's reading), 0 = by
            size (coverage: no cluster starved because a weak model is confident there); above 1
            the share sharpens toward the clusters whose rows are most uncertain on average
            (``mass**t * size**(1 - t) = mean_u**t * size``).
        alloc_over: where a coarse cluster's uncertainty mass is summed: over all its rows
            (``"pool"``), or only over its rows among the pool's ``ceil(r * B)`` most uncertain
            (``"candidates"``, the rows the flat variant would cluster): the budget then follows where
            the high-uncertainty rows are instead of the clusters' sizes, which dominate a sum over
            thousands of moderately uncertain rows; every non-empty cluster still gets one pick.
            ``"auto"``: ``pool`` while the round's pick rule is typical (explore: spread the budget
            by region), ``candidates`` once it is uncertain (exploit: follow the most uncertain rows).
            ``"global"``: the coarse level only splits the work: the pool's ``ceil(r * B)`` most
            uncertain rows (the flat variant's candidates) are the candidates, each coarse cluster
            clusters its share of them into a share of the budget by their uncertainty mass
            (clusters holding none get no pick), so the fine problems are K1 pieces of the flat one.
        late_uncertainty: with ``pick="auto"``/``"auto_local"``: the score HAL ranks, allocates and
            picks by once the round's rule is uncertain (``"same"``: ``uncertainty``). While picks
            are typical the score only chooses candidates; once they are uncertain it chooses the
            picks themselves, and a different score may serve each job better.
        late_pick: with ``pick="auto"``/``"auto_local"``: the pick once the rule leaves typical:
            ``"uncertain"``, or ``"eer"`` (expected error reduction on the pool's k-NN graph).
        early_pick: with ``pick="auto"``/``"auto_local"``: the pick before that, ``"typical"`` or
            ``"cover"``.
        cover_by: a ``cover`` pick's gain: the uncovered pool rows a ball holds (``"rows"``), or
            their summed uncertainty (``"uncertainty"``).
        boundary_check: after the fine level, a pick closer than the fine clusters' measured radius
            to a pick of another coarse cluster is replaced by the next candidate of its own cluster
            that is not (:func:`~hssal_ray.query.hal_steps.cross_cluster_duplicates`): near-copies
            split by a coarse boundary are otherwise picked once on each side. ``"late"``: only in
            rounds whose pick rule is not ``typical``.
        cover_scale: with ``cover_labeled``: the scale of TypiClust's coverage rule. ``"cluster"``:
            each coarse cluster clusters its candidates and labeled rows into ``b_k + L_k`` and takes
            its ``b_k`` (by uncertainty mass) from the fine clusters without a label. ``"flat"``: the
            flat variant's scale: the ``B + L`` fine clusters are spread over the coarse clusters as
            the candidates are (``b_k`` by candidate count, plus ``L_k``), and the budget goes to the
            uncovered fine clusters of all coarse clusters together, largest first
            (:func:`~hssal_ray.query.hal_steps.merge_heads`), so a coarse cluster the labels cover
            yields its picks to one they do not. Needs ``alloc_over="global"``; the mass weighings,
            round robin and ``cover`` picks are rejected with it. The flat variant ignores it.
        coarse_fit: what the coarse k-means is fitted on (every pool row is then assigned to it):
            a sample of the pool (``"pool"``), or with ``alloc_over="global"`` the round's candidates
            themselves (``"candidates"``), whose split it is: the pool's dense regions set the
            coarse boundaries otherwise, and uncertain candidates lie between them, so a coarse
            boundary can cut one group of candidates in two.
        copy_check: the same check over every pair of picks, of one coarse cluster too
            (``within`` of :func:`~hssal_ray.query.hal_steps.cross_cluster_duplicates`; the flat
            variant runs it over its one cluster): with few candidates per pick a scene present many
            times spans two fine clusters and is picked twice. ``"late"``: only in rounds whose pick
            rule is not ``typical``. With it on, ``boundary_check`` adds nothing in those rounds.
        typical_scale: the neighbourhood of a typical pick's density: TypiClust's 20 nearest
            candidates of its coarse cluster (``"cluster"``), or ``"flat"``: the flat variant's
            scale, 20 neighbours among all the round's candidates, i.e. ``20 * m_k / M`` among the
            ``m_k`` of a coarse cluster (at least 1). With a few dozen candidates per coarse cluster
            the first is the cluster's centre, the second a local density as in the flat variant,
            taken over 1-2 neighbours. ``"global"``: the flat variant's density itself, the 20
            nearest of all ``M`` candidates whatever their coarse cluster (against a sample of
            4,096 of them above that many, k scaled: :meth:`_candidate_density`).
        typical_over: what a typical pick's density is measured among: the round's candidates
            (``"candidates"``, scaled by ``typical_scale``), or ``"pool"``: TypiClust's own density,
            the 20 nearest pool rows of the candidate's coarse cluster (labeled rows included; a
            sample of 4,096 with k scaled above that, :meth:`_pool_density`). The flat variant
            measures it among the whole pool (the same sample rule): ``M * N`` distances there,
            ``sum_k m_k * N_k`` here.
        alloc_flips: weigh each coarse cluster's uncertainty mass by how often its rows' weak and
            strong views disagree on the class, relative to the pool (:func:`flip_rates`; needs the
            ``u_disagreement`` column). A single row's flip is one augmentation's verdict, noisy; a
            coarse cluster's rate says where consistency training (the SSL half) has not settled,
            i.e. where self-training will not fix the model by itself and labels are worth most.
            ``"mass"``: the cluster's summed disagreement (total variation, plus 1 per flip) instead
            of its flip count, a denser signal where flips are few (the same prior, worth 1).
        alloc_purity: weigh each coarse cluster's uncertainty mass by how mixed the oracle's labels
            in it are (:func:`label_impurity`, needs ``pool.labels``): the hierarchy's own use of the
            labels, which a single cluster cannot make (Dasgupta & Hsu's hierarchical sampling).
        coarse_by: what the coarse level is: ``"kmeans"`` of the embeddings (K1 clusters), or the
            model's view of the classes (:func:`class_groups`, no k-means): ``"predicted"``, one
            coarse group per predicted class (the budget follows the classes whose rows are
            uncertain, and the fine level spreads the picks inside each), or ``"confusion"``, one
            per unordered pair of the two most probable classes (a group is one decision boundary).
            ``coarse_k`` and ``coarse_fit_sample`` are then not read.
        coarse_min_classes: with ``coarse_k=0``, the automatic K1 is at least the number of classes
            (``pool.probs``' width; :func:`auto_coarse_k`): a k-means coarser than the label space
            merges classes into one coarse cluster, whose budget then follows their summed mass.
        alloc_round_robin: each coarse cluster holding candidates takes picks in turn, the one with
            the fewest candidates first, until the budget is spent (:func:`round_robin_budget`,
            Cluster-Margin's round robin), instead of in proportion to its uncertainty mass; the
            mass weighings (``alloc_temper``, ``alloc_flips``, ``alloc_purity``) then have nothing
            to weigh and are rejected with it.
        random_state: seed.
        map_fn: ``map``-like callable used for the per-cluster fine stage (default: builtin map).

    Attributes:
        coarse_labels_: (n,) int64 coarse cluster of every pool row (after :meth:`select`).
        info_: diagnostics: ``coarse_k``, ``backend``, ``budget_per_cluster`` (K,), ``cluster_sizes``
            (K,), ``cluster_mass`` (K,), ``pick_coarse_cluster`` (budget,), ``n_candidates``, ``seconds``.
    """

    def _check_params(self) -> None:
        super()._check_params()
        weighed = [f"{k}={getattr(self, k)!r}" for k, off in MASS_WEIGHINGS if getattr(self, k) != off]
        if self.alloc_round_robin and weighed:
            raise ConfigError(
                f"HierarchicalQuery: alloc_round_robin=True allocates without the uncertainty mass, "
                f"so {', '.join(weighed)} would weigh nothing; set one or the other"
            )
        clash = coarse_fit_clashes(self)
        if clash:
            raise ConfigError(
                "HierarchicalQuery: coarse_fit='candidates' fits the coarse k-means on the flat variant's "
                f"candidates and cannot run with {', '.join(clash)}"
            )
        clash = cover_scale_clashes(self)
        if clash:
            raise ConfigError(
                "HierarchicalQuery: cover_scale='flat' takes the picks from the fine clusters the "
                "labels leave uncovered, over all coarse clusters at once (not by uncertainty mass), "
                f"and cannot run with {', '.join(clash)}"
            )

    def _global_candidates(
        self, pool: Pool, avail: np.ndarray, u: np.ndarray, pick: str, budget: int
    ) -> np.ndarray:
        """``alloc_over: global``'s candidates: the flat variant's ``ceil(r * B)``, in priority order."""
        conf = self._confident(pool)
        m_all = int(min(math.ceil(self._ratio_for(pick) * budget), avail.size))
        return _top_candidates(u[avail], avail, None if conf is None else conf[avail], m_all)

    def _candidate_density(self, emb: Any, cands: list[np.ndarray], seed: int) -> list[np.ndarray]:
        """``typical_scale: global``: each candidate's typicality among all the round's candidates.

        The flat variant's density (20 nearest of the ``M`` candidates, :func:`typicality`) while
        ``M`` is at most :data:`DENSITY_REFERENCE_ROWS`; above it against a seeded sample of that many
        candidates with k scaled by its share (:meth:`_pool_density`), so the cost is ``M * 4096``
        instead of ``M**2``. Returned split as ``cands``.
        """
        allc = np.concatenate(cands)
        if allc.size <= DENSITY_REFERENCE_ROWS:
            dens = typicality(take_rows(emb, allc), TYPICAL_NEIGHBORS)
        else:
            dens = self._pool_density(emb, allc, np.sort(allc), seed)
        return np.split(dens, np.cumsum([c.size for c in cands])[:-1])

    def _merged_heads(
        self, tasks: list[tuple[np.ndarray, ClusterTask]], u: np.ndarray, budget: int, shared: np.ndarray
    ) -> np.ndarray:
        """``cover_scale: flat``: the budget's picks among every coarse cluster's fine-cluster heads.

        Each task clusters its candidates and labeled rows (:func:`fine_heads`); the heads of all of
        them are ranked together by TypiClust's rule (:func:`merge_heads`). Too few heads (fine
        clusters that hold no candidate) are made up with the most uncertain candidates left
        (``shared``, in priority order).
        """
        found = [h.reshape(-1, 3) for h in self._run([t for _, t in tasks], fine_heads)]
        rows = np.concatenate([cand[h[:, 0]] for (cand, _), h in zip(tasks, found, strict=True)])
        n_lab = np.concatenate([h[:, 1] for h in found])
        n_cand = np.concatenate([h[:, 2] for h in found])
        picks = merge_heads(rows, n_lab, n_cand, u[rows], budget)
        if picks.size < budget:
            rest = shared[np.isin(shared, picks, invert=True)]
            picks = np.concatenate([picks, rest[: budget - picks.size]])
        return picks

    def _class_floor(self, pool: Pool) -> int:
        """The number of classes K1 may not go below (``coarse_min_classes``), else 0."""
        if not self.coarse_min_classes or self.coarse_k:
            return 0
        if pool.probs is None:
            raise DataError("query.coarse_min_classes needs the pool's class probabilities ('probs' column)")
        return int(np.shape(pool.probs)[1])

    def _coarse_kmeans(
        self,
        pool: Pool,
        avail: np.ndarray,
        budget: int,
        backend: str,
        rng: np.random.Generator,
        fit_from: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int, int, np.ndarray, float]:
        """The coarse k-means: fit on a sample of the available rows (of ``fit_from``, the round's
        candidates with ``coarse_fit: candidates``), one pass assigns every row.

        Returns ``(labels (n,), K1, seed, centers (K1, d), time the fit ended)``; the seed, drawn
        from ``rng`` first, also seeds the fine level.
        """
        emb = pool.embeddings
        n_av = avail.size
        rows = avail if fit_from is None else np.sort(fit_from)
        k1 = int(min(self.coarse_k or auto_coarse_k(n_av, budget, self._class_floor(pool)), rows.size))
        seed = int(rng.integers(2**31 - 1))
        n_fit = int(min(self.coarse_fit_sample, FIT_ROWS_PER_CENTROID * k1))
        sample = rows if rows.size <= n_fit else np.sort(rng.choice(rows, size=n_fit, replace=False))
        xs = emb[torch.from_numpy(sample).to(emb.device)] if isinstance(emb, torch.Tensor) else emb[sample]
        bad = nonfinite_rows(xs)
        if bad.size:
            raise DataError(
                f"embeddings have NaN or inf in rows {sample[bad][:5].tolist()} "
                f"(ids {[str(pool.ids[r]) for r in sample[bad][:5]]})"
            )
        km = make_kmeans(backend, n_clusters=k1, max_iter=int(self.kmeans_iters), random_state=seed).fit(xs)
        del xs
        t_fit = time.perf_counter()
        if backend == "cuml":
            whole = np.asarray(emb) if is_row_source(emb) else emb  # cuML reads arrays only
            labels = km.predict(whole)
            labels[nonfinite_rows(whole)] = -1  # cuML does not flag NaN rows itself
            del whole
        else:  # one streamed pass; rows with NaN/inf come back as -1 (the check is free)
            labels, _ = assign_chunked(emb, km.cluster_centers_)
        bad = np.flatnonzero(labels < 0)
        if bad.size:
            raise _nonfinite_error(pool, bad)
        return labels, k1, seed, np.asarray(km.cluster_centers_), t_fit

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        t0 = time.perf_counter()
        avail = self._validate(pool, budget, check_embeddings=False)  # NaN check fused below
        rng = self._rng()
        emb = pool.embeddings
        pick = self.pick_rule(pool)  # the round's rule: it sets the score, the allocation and the picks
        score = self._ranking_for(pick)
        u_all = pool.uncertainty(score)
        n_av = avail.size
        backend = resolve_backend(self.kmeans_backend)
        fit_from = None  # coarse_fit: candidates: the rows the coarse k-means is fitted on
        if self.coarse_by != "kmeans":  # the coarse level is the model's classes: no fit, no pass
            bad = nonfinite_rows(emb)  # what the k-means pass checks for free
            if bad.size:
                raise _nonfinite_error(pool, bad)
            labels, k1 = class_groups(pool, self.coarse_by)
            seed = int(rng.integers(2**31 - 1))
            centers = None
            t_fit = t_assign = time.perf_counter()
        else:
            if self.coarse_fit == "candidates":  # the coarse level splits the candidates: fit it on them
                fit_from = self._global_candidates(pool, avail, u_all, pick, budget)
            labels, k1, seed, centers, t_fit = self._coarse_kmeans(
                pool, avail, budget, backend, rng, fit_from
            )
            t_assign = time.perf_counter()

        every = n_av == len(pool)  # then ``avail`` is arange(n): no per-row gathered copies
        lab_av = labels if every else labels[avail]
        conf = self._confident(pool)
        w = (u_all if every else u_all[avail]).astype(np.float64)
        if conf is not None and (w * ~conf[avail]).sum() > 0:
            w = w * ~conf[avail]  # mass of the rows SSL has not learned yet
        counts = np.bincount(lab_av, minlength=k1)
        over = self.alloc_over
        if over == "auto":
            over = "candidates" if pick in ("uncertain", "eer") else "pool"
        shared, cap = None, counts  # cap: the most picks a cluster can take
        ratio = self._ratio_for(pick)
        m_all = int(min(math.ceil(ratio * budget), n_av))  # the flat variant's r * B
        if over == "global":  # the flat variant's candidates, each coarse cluster clustering its share
            shared = (
                fit_from
                if fit_from is not None
                else self._global_candidates(pool, avail, u_all, pick, budget)
            )
            cap = np.bincount(labels[shared], minlength=k1)
            mass = np.bincount(labels[shared], weights=u_all[shared].astype(np.float64), minlength=k1)
        elif over == "candidates":  # only the pool's r * B most uncertain rows carry mass
            top = top_k(w, m_all)  # the rows the flat variant would take (ties: lower row first)
            mass = np.bincount(lab_av[top], weights=w[top], minlength=k1)
        else:
            mass = np.bincount(lab_av, weights=w, minlength=k1)
        flip_rate = None
        if self.alloc_flips:  # where consistency training has not settled, by coarse cluster
            u_dis = pool.uncertainty("disagreement")
            flips = u_dis if self.alloc_flips == "mass" else u_dis >= 1.0
            flip_rate = flip_rates(lab_av, flips if every else flips[avail], k1)
            mass = mass * flip_rate
        impurity = None
        if self.alloc_purity:  # where the oracle's labels show a cluster mixes classes
            impurity = self._impurity(pool, labels, k1)
            mass = mass * impurity
        t = float(self.alloc_temper)
        if t != 1.0:  # tempered (t < 1: toward cluster size) or sharpened (t > 1: toward mean uncertainty)
            size = np.maximum(cap.astype(np.float64), 1.0)  # (a negative power of 0 is inf)
            mass = np.where(cap > 0, np.power(np.maximum(mass, 0.0), t) * np.power(size, 1.0 - t), 0.0)
        flat_cover = self.cover_scale == "flat"
        if self.alloc_round_robin:
            b = round_robin_budget(cap, budget)
        elif flat_cover:  # fine clusters spread as the candidates are: the flat variant's B + L clusters
            b = allocate_budget(cap.astype(np.float64), cap, budget)
        else:
            b = allocate_budget(mass, cap, budget)
        order = np.argsort(lab_av, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        fine_backend = self._fine_backend(backend)
        labeled = self._labeled_rows(pool)
        lab_of = labels[labeled] if labeled is not None else None
        picks_by_cluster = self._local_rules(pool, labels, k1) if self.pick == "auto_local" else None
        ks = np.flatnonzero(b)
        if shared is not None:  # priority order kept inside each cluster
            lab_sh = labels[shared]
            cands = [shared[lab_sh == k] for k in ks]
        else:
            cands = []
            for k in ks:
                rows = avail[order[starts[k] : starts[k + 1]]]
                m = int(min(math.ceil(ratio * b[k]), rows.size))
                cands.append(_top_candidates(u_all[rows], rows, None if conf is None else conf[rows], m))
        rules = [pick if picks_by_cluster is None else picks_by_cluster[k] for k in ks]
        gains: list[np.ndarray | None] = [None] * len(ks)
        t_filter = time.perf_counter()
        if "eer" in rules:
            gains = [*self._eer_gains(pool, cands, seed, labels, ks)]
        t_eer = time.perf_counter()
        n_flat = shared.size if shared is not None else sum(c.size for c in cands)
        by_density = self.typical_over == "pool" and any(r in ("typical", "balanced") for r in rules)
        by_cover = "cover" in rules
        if by_density or by_cover:  # every pool row (labeled too) by coarse cluster
            ord_all = np.argsort(labels, kind="stable")
            st_all = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k1))])
        if by_cover:
            radius = self._cover_radius(emb, len(pool), seed)
            lab_all = self._labeled(pool)
            lab_all_of = labels[lab_all]
        dens_global = None
        if (
            self.typical_scale == "global"
            and not by_density
            and any(r in ("typical", "balanced") for r in rules)
        ):
            dens_global = self._candidate_density(emb, cands, seed)
        tasks = []
        for i, k in enumerate(ks):
            lab_k = None if labeled is None else labeled[lab_of == k]
            seed_k = seed + 7919 * (k + 1)
            nn = TYPICAL_NEIGHBORS
            if self.typical_scale == "flat":  # the flat variant's 20 neighbours among all candidates
                nn = max(1, round(TYPICAL_NEIGHBORS * cands[i].size / max(n_flat, 1)))
            dens = None if dens_global is None else dens_global[i]
            if by_density and rules[i] in ("typical", "balanced") and b[k] < cands[i].size:
                rows_k = np.sort(ord_all[st_all[k] : st_all[k + 1]])
                dens = self._pool_density(emb, cands[i], rows_k, seed_k)
            cov = None
            if rules[i] == "cover" and b[k] < cands[i].size:  # balls over the coarse cluster's pool rows
                rows_k = np.sort(ord_all[st_all[k] : st_all[k + 1]])
                cov = self._coverage(emb, cands[i], rows_k, lab_all[lab_all_of == k], radius, seed_k, u_all)
            args = (int(k), emb, cands[i], u_all, b[k], fine_backend, seed_k, rules[i], lab_k, gains[i])
            probs = self._fine_probs(pool, rules[i])  # per cluster: auto_local's rules differ
            task = self._task(*args, n_neighbors=nn, density=dens, cover=cov, probs=probs)
            tasks.append((cands[i], task))
        ts = [t for _, t in tasks]
        if flat_cover:
            picks = self._merged_heads(tasks, u_all, budget, shared)
            b = np.bincount(labels[picks], minlength=k1)  # what the coverage gave each coarse cluster
        else:
            results = self._run(ts)
            picks = np.concatenate([cand[r] for (cand, _), r in zip(tasks, results, strict=True)])
        picks = picks[np.lexsort((picks, -u_all[picks]))]
        t_fine = time.perf_counter()
        boundary = None
        within = self._checks(self.copy_check, pick)
        if within or self._checks(self.boundary_check, pick):
            spares = None
            if within:  # the rows a wider (early) ratio would have added, by coarse cluster
                wide = self._spares(u_all, avail, conf, budget, ratio, np.concatenate(cands))
                lab_w = labels[wide]
                spares = [wide[lab_w == k] for k in ks]
            picks, boundary = cross_cluster_duplicates(
                emb,
                picks,
                cands,
                labels,
                rank_of=lambda i: candidate_rank(ts[i]),
                within=within,
                spares=spares,
            )
            picks = picks[np.lexsort((picks, -u_all[picks]))]
        t_end = time.perf_counter()
        self.coarse_labels_ = labels
        self.coarse_centers_ = centers
        self.info_ = {
            "coarse_k": k1,
            "coarse_by": self.coarse_by,
            "backend": backend,
            "budget_per_cluster": b,
            "cluster_sizes": counts,
            "cluster_mass": mass,
            "cluster_flip_rate": flip_rate,
            "cluster_impurity": impurity,
            "pick_coarse_cluster": labels[picks],
            "alloc_over": over,
            "uncertainty": score,
            "n_candidates": int(sum(len(c) for c, _ in tasks)),
            "pick": pick if picks_by_cluster is None else _summary([t.pick for _, t in tasks]),
            "boundary": boundary,
            "seconds": {
                "coarse_fit": t_fit - t0,
                "assign": t_assign - t_fit,
                "filter": t_filter - t_assign,
                "eer": t_eer - t_filter,
                "fine": t_fine - t_eer,
                "boundary": t_end - t_fine,
                "total": t_end - t0,
            },
        }
        logger.debug("hal: %s", self.info_["seconds"])
        return self._finish(pool, picks, budget)


@register("hal_flat")
class FlatHierarchicalQuery(_HALBase):
    """One-level HAL: the ``ceil(r * B)`` most uncertain rows, fine clustering into B, one pick each.

    Takes the same parameters as :class:`HierarchicalQuery` (``coarse_k``, ``coarse_fit_sample`` and
    the other coarse-level ones are ignored; ``copy_check`` is read). ``info_`` has ``n_candidates``,
    ``boundary`` (``copy_check``'s counts, or None), ``pick_coarse_cluster`` (all 0: the whole pool
    is one coarse cluster) and ``seconds``.
    """

    def select(self, pool: Pool, budget: int) -> np.ndarray:
        """See :meth:`QueryStrategy.select`."""
        t0 = time.perf_counter()
        avail = self._validate(pool, budget)
        pick = self.pick_rule(pool)
        u_all = pool.uncertainty(self._ranking_for(pick))
        m = int(min(math.ceil(self._ratio_for(pick) * budget), avail.size))
        conf = self._confident(pool)
        cand = _top_candidates(u_all[avail], avail, None if conf is None else conf[avail], m)
        seed = int(self._rng().integers(2**31 - 1))
        gain = self._eer_gains(pool, [cand], seed)[0] if pick == "eer" else None
        dens = None
        if self.typical_over == "pool" and pick in ("typical", "balanced") and budget < cand.size:
            dens = self._pool_density(pool.embeddings, cand, np.arange(len(pool)), seed)
        cov = None
        if pick == "cover" and budget < cand.size:  # balls over the whole pool
            radius = self._cover_radius(pool.embeddings, len(pool), seed)
            every = np.arange(len(pool), dtype=np.int64)
            cov = self._coverage(pool.embeddings, cand, every, self._labeled(pool), radius, seed, u_all)
        task = self._task(
            0,
            pool.embeddings,
            cand,
            u_all,
            budget,
            self._fine_backend(resolve_backend(self.kmeans_backend)),
            seed,
            pick,
            self._labeled_rows(pool),
            gain,
            density=dens,
            cover=cov,
            probs=self._fine_probs(pool, pick),
        )
        picks = cand[self._run([task])[0]]
        picks = picks[np.lexsort((picks, -u_all[picks]))]
        self.coarse_labels_ = np.zeros(len(pool), dtype=np.int64)
        copies = None
        if self._checks(self.copy_check, pick):  # one coarse cluster: every pair of picks
            picks, copies = cross_cluster_duplicates(
                pool.embeddings,
                picks,
                [cand],
                self.coarse_labels_,
                rank_of=lambda _: candidate_rank(task),
                within=True,
                spares=[self._spares(u_all, avail, conf, budget, self._ratio_for(pick), cand)],
            )
            picks = picks[np.lexsort((picks, -u_all[picks]))]
        self.info_ = {
            "n_candidates": int(m),
            "boundary": copies,
            "pick": task.pick,
            "pick_coarse_cluster": np.zeros(budget, dtype=np.int64),
            "seconds": {"total": time.perf_counter() - t0},
        }
        return self._finish(pool, picks, budget)
