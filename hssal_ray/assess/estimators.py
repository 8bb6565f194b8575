"""Design-based accuracy and area of a map from a stratified random sample (plain numpy, no Ray).

The map is the model's class of every chip of an archive (``python -m hssal_ray.predict``); the
strata are its classes. A person labels a stratified random sample of chips without seeing the map's
class; the estimators below turn those reference labels into the map's overall accuracy, user's and
producer's accuracy per class and the area (chip count) of each reference class, each with a
standard error. They are the stratified estimators of Olofsson et al. (2014), "Good practices for
estimating area and assessing accuracy of land change" (Remote Sens. Environ. 148, 42-57; eqs. 2-12
there), with the finite-population correction ``1 - n_i / N_i`` of Cochran (1977, ch. 5) in every
variance term, so that a stratum that is sampled whole adds no variance (Olofsson's map strata are
millions of pixels and omit it; on a large archive it is 1).

Notation: stratum = map class ``i`` with ``N_i`` chips in the map and ``n_i`` in the sample,
``n_ij`` sampled chips of map class ``i`` whose reference class is ``j``, ``W_i = N_i / N``. The
estimated proportion of the archive that is map ``i`` and reference ``j`` is ``p_ij = W_i n_ij / n_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "allocate",
    "capped_wilson",
    "draw",
    "Estimates",
    "estimate",
    "intervals",
    "normal_intervals",
    "overall_bounds",
    "overall_interval",
    "posterior_intervals",
    "users_bounds",
    "variance_factor",
    "wilson",
    "Z95",
]

Z95 = 1.959963984540054
"""The normal quantile of a two-sided 95% interval (Olofsson et al. report estimate +- 1.96 SE)."""


def allocate(sizes: np.ndarray, n: int, min_per_stratum: int = 50) -> np.ndarray:
    """Sample size of each stratum: at least ``min_per_stratum`` and never fewer than 2 (or the whole
    stratum if smaller), the rest in proportion to the strata's sizes.

    Olofsson et al. (2014, section 5.1.2) advise this compromise: proportional allocation alone leaves
    rare classes a handful of units (their user's accuracy then has a huge standard error), equal
    allocation alone gives the overall accuracy and the large classes' areas a larger one. Formally,
    ``n_i = min(N_i, max(m_i, lambda * N_i))`` with ``m_i = min(N_i, min_per_stratum)`` and
    ``lambda`` chosen so that the sizes sum to ``n``; when the floors alone exceed ``n``, every
    stratum gets an equal share (capped at its size). Integer sizes by the largest remainder.

    Args:
        sizes: ``N_i``, chips per map class (0 allowed: such a stratum gets 0).
        n: Total sample size; ``n >= sum(sizes)`` samples every chip.
        min_per_stratum: The floor ``m`` (0: proportional allocation, but still 2 a stratum: with
            one chip a stratum's variance, and so every standard error, is unknown).

    Returns:
        ``n_i`` as int64, summing to ``min(n, sum(sizes))``, each ``<= N_i``.
    """
    N = np.asarray(sizes, dtype=np.int64)
    if N.ndim != 1 or (N < 0).any():
        raise ValueError("sizes must be a 1-D array of counts >= 0")
    if n < 0 or min_per_stratum < 0:
        raise ValueError(f"n and min_per_stratum must be >= 0, got {n}, {min_per_stratum}")
    total = int(N.sum())
    if n >= total:
        return N.copy()
    floor = np.minimum(N, max(min_per_stratum, 2)).astype(np.float64)  # 2: a variance needs 2 chips
    cap = N.astype(np.float64)
    if floor.sum() >= n:  # equal shares capped at each stratum's size: sum(min(cap, t)) = n
        share = _solve(lambda t: np.minimum(cap, t), n, float(cap.max()))
    else:
        share = _solve(lambda lam: np.minimum(cap, np.maximum(floor, lam * cap)), n, 1.0)
    return _round_to(share, n, N)


def _solve(f: Callable[[float], np.ndarray], n: int, hi: float) -> np.ndarray:
    """``f(x)`` for the ``x`` in ``[0, hi]`` where ``f(x).sum() == n`` (f non-decreasing; bisection)."""
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid).sum() < n:
            lo = mid
        else:
            hi = mid
    return f(hi)


def _round_to(x: np.ndarray, n: int, cap: np.ndarray) -> np.ndarray:
    """Integers summing to ``n``, each ``<= cap``: the floors, then +1 by the largest remainder."""
    out = np.minimum(np.floor(x + 1e-9).astype(np.int64), cap)
    rest = x - out
    for i in np.argsort(-rest, kind="stable"):
        if out.sum() >= n:
            break
        if out[i] < cap[i]:
            out[i] += 1
    while out.sum() > n:  # only from the 1e-9 slack
        out[int(np.argmax(out - x))] -= 1
    return out


def draw(strata: np.ndarray, sizes: np.ndarray, seed: int) -> np.ndarray:
    """A stratified random sample: ``sizes[i]`` distinct positions of ``strata == i`` for each ``i``,
    without replacement, returned in a random order (so that the order of the sample does not
    give its strata away to the person who labels it).

    Args:
        strata: The map class of every chip, in a fixed order (the caller sorts by sample id).
        sizes: ``n_i`` per stratum (:func:`allocate`).
        seed: The draw's seed: the same seed, map and sizes give the same sample.

    Returns:
        Positions into ``strata`` (int64).
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    picked = []
    for i, k in enumerate(np.asarray(sizes, dtype=np.int64)):
        where = np.flatnonzero(strata == i)
        if k > len(where):
            raise ValueError(f"stratum {i} has {len(where)} chips, {k} asked")
        if k:
            picked.append(rng.choice(where, size=int(k), replace=False))
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return out[rng.permutation(len(out))].astype(np.int64)


def wilson(p: float, n_eff: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` seen in ``n_eff`` independent draws.

    Used for user's accuracy, a plain proportion within one stratum, with ``n_eff = (n_i - 1) /
    (1 - n_i / N_i)`` (the sample size the finite-population variance corresponds to): unlike the
    normal interval ``p +- 1.96 SE`` it does not shrink to a point when every sampled chip of a class
    is right (14 of 14 correct gives [0.78, 1], not 1 +- 0). ``(nan, nan)`` for ``n_eff <= 0``; the
    point ``(p, p)`` for an infinite ``n_eff`` (a stratum sampled whole).
    """
    if not n_eff > 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    if math.isinf(n_eff):
        return p, p
    z2 = z * z / n_eff
    centre = (p + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimates:
    """What :func:`estimate` gives; arrays are per class (index = class id), ``se_*`` standard errors
    (NaN where a stratum has fewer than 2 sampled chips and is not sampled whole).

    Attributes:
        counts: ``n_ij``, sampled chips by map class (rows) and reference class (columns).
        proportions: ``p_ij``, the estimated share of the archive by map and reference class.
        overall: Overall accuracy, ``sum_j p_jj``.
        users: User's accuracy ``n_ii / n_i`` (NaN for a class with no sampled chip).
        producers: Producer's accuracy ``p_jj / p_.j`` (NaN for a class no chip is estimated to be).
        area: ``p_.j``, the estimated share of the archive whose reference class is ``j``.
        map_share: ``W_i``, the share of the archive the map gives class ``i``.
        users_low, users_high: Wilson's 95% interval of each user's accuracy (:func:`wilson`).
        sizes: ``N_i``, chips per map class.
    """

    counts: np.ndarray
    proportions: np.ndarray
    overall: float
    se_overall: float
    users: np.ndarray
    se_users: np.ndarray
    producers: np.ndarray
    se_producers: np.ndarray
    area: np.ndarray
    se_area: np.ndarray
    map_share: np.ndarray
    users_low: np.ndarray
    users_high: np.ndarray
    sizes: np.ndarray


def estimate(map_class: np.ndarray, ref_class: np.ndarray, sizes: np.ndarray) -> Estimates:
    """The stratified estimates of a map's accuracy and area (module docstring).

    Args:
        map_class: The map's class of each sampled chip (the stratum it was drawn from).
        ref_class: The reference (a person's) class of each sampled chip.
        sizes: ``N_i``, chips per map class in the whole map; its length is the number of classes.

    Returns:
        The :class:`Estimates`.

    Raises:
        ValueError: Mismatched lengths, a class id out of range, or a map class with chips in the map
            (``N_i > 0``) but none in the sample: then nothing about that part of the map is known and
            no estimate is unbiased.
    """
    m = np.asarray(map_class, dtype=np.int64)
    r = np.asarray(ref_class, dtype=np.int64)
    N = np.asarray(sizes, dtype=np.float64)
    c = len(N)
    if m.shape != r.shape or m.ndim != 1:
        raise ValueError(f"map_class and ref_class must be 1-D of one length, got {m.shape}, {r.shape}")
    if len(m) and (min(m.min(), r.min()) < 0 or max(m.max(), r.max()) >= c):
        raise ValueError(f"class ids must be in 0..{c - 1}")
    counts = np.zeros((c, c), dtype=np.int64)
    np.add.at(counts, (m, r), 1)
    n = counts.sum(axis=1).astype(np.float64)
    unsampled = np.flatnonzero((N > 0) & (n == 0))
    if len(unsampled):
        raise ValueError(f"map classes {unsampled.tolist()} have chips in the map but none in the sample")
    if (n > N).any():
        raise ValueError("a stratum has more sampled chips than chips in the map")
    W = N / N.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n[:, None] > 0, counts / n[:, None], 0.0)  # n_ij / n_i
        fpc = variance_factor(n, N)
        p = W[:, None] * q
        overall = float(np.trace(p))
        d = np.diag(q)
        se_overall = float(np.sqrt(np.sum(W**2 * d * (1 - d) * fpc)))
        users = np.where(n > 0, d, np.nan)
        se_users = np.sqrt(np.where(n > 0, d * (1 - d) * fpc, np.nan))
        area = p.sum(axis=0)
        se_area = np.sqrt(np.sum((W**2)[:, None] * q * (1 - q) * fpc[:, None], axis=0))
        producers = np.where(area > 0, np.diag(p) / area, np.nan)
        # Olofsson et al. eq. 7 in proportions (N_i -> W_i, N_.j -> p_.j)
        off = (W**2)[:, None] * q * (1 - q) * fpc[:, None]
        off_sum = off.sum(axis=0) - np.diag(off)
        var_p = (W**2 * (1 - producers) ** 2 * d * (1 - d) * fpc + producers**2 * off_sum) / area**2
        se_producers = np.sqrt(np.where(area > 0, var_p, np.nan))
    bounds = users_bounds(users, n, N)
    return Estimates(
        counts=counts,
        proportions=p,
        overall=overall,
        se_overall=se_overall,
        users=users,
        se_users=se_users,
        producers=producers,
        se_producers=se_producers,
        area=area,
        se_area=se_area,
        map_share=W,
        users_low=bounds[:, 0],
        users_high=bounds[:, 1],
        sizes=N.astype(np.int64),
    )


def variance_factor(n: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each stratum's ``(1 - n_i / N_i) / (n_i - 1)``, the factor of ``q (1 - q)`` in a proportion's
    variance: 0 for a stratum sampled whole (or absent from the map), NaN for one sampled once out of
    more."""
    n = np.asarray(n, dtype=np.float64)
    N = np.asarray(sizes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= N, 0.0, np.where(n > 1, (1 - n / np.maximum(N, 1)) / (n - 1), np.nan))


def users_bounds(users: np.ndarray, n: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Wilson's 95% interval of each user's accuracy, ``(C, 2)``: ``users[i]`` seen in ``n[i]`` of the
    ``sizes[i]`` chips of stratum ``i``, at ``n_eff = (n_i - 1) / (1 - n_i / N_i)`` (:func:`wilson`;
    infinite for a stratum sampled whole, 0, so NaN, for one sampled once out of more)."""
    n = np.asarray(n, dtype=np.float64)
    N = np.asarray(sizes, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(n >= N, np.inf, np.where(n > 1, (n - 1) / (1 - n / np.maximum(N, 1)), 0.0))
    out = [
        wilson(float(u), float(k)) for u, k in zip(np.asarray(users, dtype=np.float64), n_eff, strict=True)
    ]
    return np.array(out, dtype=np.float64).reshape(len(N), 2)


def normal_intervals(e: Estimates) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``estimate +- 1.96 SE`` clipped to ``[0, 1]`` for every figure (Olofsson et al. 2014), ``name ->
    (low, high)`` (arrays per class; 0-d for ``overall``); NaN where there is no standard error."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ("overall", "users", "producers", "area"):
        est = np.asarray(getattr(e, name), dtype=np.float64)
        half = Z95 * np.asarray(getattr(e, f"se_{name}"), dtype=np.float64)
        out[name] = (np.clip(est - half, 0.0, 1.0), np.clip(est + half, 0.0, 1.0))
    return out


def overall_interval(e: Estimates) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's interval of overall accuracy at the stratified design's effective sample size, capped
    at a simple random sample's: ``n_eff = min(n / (1 - n / N), OA (1 - OA) / SE^2)`` (Korn & Graubard
    1998, Survey Methodology 24, 193-201, who cap the design effect at 1 for the same reason; ``1 - n/N``
    the finite-population correction). When most strata show no error in the sample their variance
    terms are 0 and the normal interval too narrow (the stratified SE is then an underestimate); the
    cap keeps the interval at least as wide as that of a simple random sample of the same size from the
    same map. Strata sampled whole are exact and count in neither ``n`` nor ``N``."""
    lo, hi = overall_bounds(e.overall, e.se_overall**2, e.counts.sum(axis=1), e.sizes)
    return np.asarray(lo), np.asarray(hi)


def overall_bounds(overall: float, var: float, n: np.ndarray, sizes: np.ndarray) -> tuple[float, float]:
    """:func:`overall_interval` from its parts: overall accuracy, its variance, ``n_i`` and ``N_i``."""
    n_i = np.asarray(n)
    N = np.asarray(sizes)
    partial = n_i < N
    n_part = float(n_i[partial].sum())
    if n_part == 0:  # every stratum sampled whole: the map's accuracy is known
        return overall, overall
    return capped_wilson(overall, var, n_part, float(N[partial].sum()))


def capped_wilson(p: float, var: float, n: float, units: float) -> tuple[float, float]:
    """Wilson's interval of ``p`` at the effective sample size ``p (1 - p) / var``, capped at that of a
    simple random sample of ``n`` of ``units`` chips (``n / (1 - n / units)``, the finite-population
    correction; no cap when ``n >= units``). NaN without an estimate, a variance or a chip."""
    if not math.isfinite(p) or not math.isfinite(var) or n <= 0:
        return float("nan"), float("nan")
    cap = math.inf if n >= units else n / (1 - n / units)
    n_eff = min(cap, p * (1 - p) / var) if var > 0 else cap
    return wilson(p, n_eff)


def intervals(e: Estimates, *, draws: int = 4000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 95% intervals the product reports, ``name -> (low, high)``, each from the method that holds
    its nominal coverage on real maps (``benchmarks/map_accuracy.py``):

    * overall accuracy: Wilson's interval at the design's effective sample size (:func:`overall_interval`;
      a posterior's prior would shift it by the sum of every stratum's shrinkage);
    * user's accuracy: Wilson's interval (:func:`wilson`), which does not shrink to a point at 14 of 14;
    * producer's accuracy and area: the posterior of the error matrix (:func:`posterior_intervals`),
      whose normal interval is a point whenever the sample shows no error of a class.
    """
    post = posterior_intervals(e.counts, e.sizes, draws=draws, seed=seed)
    return {
        "overall": overall_interval(e),
        "users": (e.users_low, e.users_high),
        "producers": post["producers"],
        "area": post["area"],
    }


def posterior_intervals(
    counts: np.ndarray, sizes: np.ndarray, *, draws: int = 4000, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """95% intervals from the posterior of the map's whole error matrix, ``name -> (low, high)``.

    Each stratum's reference classes get a Dirichlet posterior ``theta_i ~ Dir(n_i. + alpha_i.)`` and
    its ``N_i - n_i`` chips that were not sampled are drawn from it (multinomial), so a stratum sampled
    whole adds no uncertainty (the finite population); the overall, user's and producer's accuracy
    and the area shares of each draw give the 2.5 and 97.5 percentiles.

    The prior is Jeffreys' on whether a chip of the stratum is what the map says (``alpha_ii = 1/2``)
    with the other half pseudo-chip spread evenly over the other classes (``alpha_ij = 1 / (2 (C-1))``):
    the marginal of ``theta_ii`` is then the Jeffreys posterior of a binomial proportion, whose
    interval covers well even at 10-20 chips (Brown, Cai & DasGupta 2001, Stat. Sci. 16, 101-133).

    Why not only ``estimate +- 1.96 SE``: when the sample shows no chip of class ``j`` outside stratum
    ``j`` (common at 10-20 chips a class and 95% accuracy) the standard error of ``j``'s producer's
    accuracy and area is 0 and the normal interval a point, though some chips of ``j`` surely hide in
    other strata (``benchmarks/map_accuracy.py`` measures how often each interval holds the truth).

    Args:
        counts: ``n_ij`` (:attr:`Estimates.counts`).
        sizes: ``N_i``.
        draws: Posterior draws.
        seed: Their seed (the same counts give the same intervals).
    """
    import warnings

    n_ij = np.asarray(counts, dtype=np.float64)
    N = np.asarray(sizes, dtype=np.int64)
    c = len(N)
    prior = np.full((c, c), 0.5 / max(c - 1, 1)) if c > 1 else np.zeros((1, 1))
    np.fill_diagonal(prior, 0.5)
    rng = np.random.default_rng(seed)
    n = n_ij.sum(axis=1)
    q = np.zeros((draws, c, c))
    for i in range(c):
        rest = int(N[i] - n[i])
        if N[i] == 0:
            continue
        if rest <= 0:
            q[:, i] = n_ij[i] / N[i]
            continue
        theta = rng.dirichlet(n_ij[i] + prior[i], size=draws)
        q[:, i] = (n_ij[i] + rng.multinomial(rest, theta)) / N[i]
    W = N / max(N.sum(), 1)
    p = W[None, :, None] * q
    with np.errstate(invalid="ignore", divide="ignore"):
        area = p.sum(axis=1)
        diag = np.diagonal(p, axis1=1, axis2=2)
        values = {
            "overall": diag.sum(axis=1),
            "users": np.where(N > 0, np.diagonal(q, axis1=1, axis2=2), np.nan),
            "producers": diag / area,
            "area": area,
        }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: classes the map never gives
        for name, v in values.items():
            lo, hi = np.nanpercentile(v, [2.5, 97.5], axis=0)
            out[name] = (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    return out
