"""The accuracy of another map of the same archive from a sample stratified by the first (plain numpy).

A labeled assessment sample is stratified by the classes of the map it was drawn from (map A). Another
map of the same chips (map B: the model of a later round, another run, another model) can be assessed
from the same reference labels, with no new labeling: the sample is still a probability sample of the
archive, only B's classes cut across A's strata. Stehman (2014), "Estimating area and map accuracy for
stratified random sampling when the strata are different from the map classes" (Int. J. Remote Sens.
35, 4923-4939), gives the estimators: overall accuracy and area shares are stratified means, user's and
producer's accuracy are combined ratio estimators ``R = sum_h N_h ybar_h / sum_h N_h xbar_h`` with

    V(R) = 1 / X^2 * sum_h N_h^2 (1 - n_h / N_h) (s2_yh + R^2 s2_xh - 2 R s_xyh) / n_h

(``y`` = the chip is B's class k and reference class k; ``x`` = B's class k for user's accuracy, reference
class k for producer's). With B = A they are Olofsson et al.'s estimators (``estimators.estimate``).

Intervals: for user's and producer's accuracy Wilson's at the effective sample size ``p (1 - p) / V``,
capped at the sampled chips of the domain ``x = 1`` (with the finite-population correction), the rule the
product uses for the sampled map's overall accuracy; for overall accuracy Wilson's at a variance smoothed
per stratum (:func:`_overall_bounds`). ``benchmarks/map_accuracy.py --other`` measures their coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hssal_ray.assess.estimators import capped_wilson, variance_factor, wilson

__all__ = ["OtherMapEstimates", "estimate_other_map", "stratified_ratio"]


@dataclass(frozen=True)
class OtherMapEstimates:
    """Map B's figures from a sample stratified by map A (arrays per class; NaN where undefined).

    Attributes:
        overall, se_overall, overall_low, overall_high: B's overall accuracy.
        users, se_users, users_low, users_high: B's user's accuracy per class.
        producers, se_producers, producers_low, producers_high: B's producer's accuracy per class.
        counts: Sampled chips by B's class (rows) and reference class (columns).
        agreement: The share of the archive where A and B give one class (known from the maps).
    """

    overall: float
    se_overall: float
    overall_low: float
    overall_high: float
    users: np.ndarray
    se_users: np.ndarray
    users_low: np.ndarray
    users_high: np.ndarray
    producers: np.ndarray
    se_producers: np.ndarray
    producers_low: np.ndarray
    producers_high: np.ndarray
    counts: np.ndarray
    agreement: float


def stratified_ratio(
    strata: np.ndarray, y: np.ndarray, x: np.ndarray, sizes: np.ndarray
) -> tuple[float, float, float]:
    """Stehman's combined ratio estimator ``R = Y / X`` of two per-chip variables over the archive
    from a stratified random sample, its variance, and the sampled chips with ``x > 0``.

    Args:
        strata: Each sampled chip's stratum (index into ``sizes``).
        y, x: The two variables of each sampled chip (``x = 1`` everywhere: a stratified mean).
        sizes: ``N_h``, chips per stratum in the archive.

    Returns:
        ``(R, V(R), m)``; ``R`` NaN when no sampled chip has ``x > 0``; ``V`` NaN when a stratum with
        chips outside the sample has fewer than 2 in it.
    """
    h = np.asarray(strata, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    N = np.asarray(sizes, dtype=np.float64)
    n = np.bincount(h, minlength=len(N)).astype(np.float64)
    m = float((x > 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        ybar = np.bincount(h, weights=y, minlength=len(N)) / n
        xbar = np.bincount(h, weights=x, minlength=len(N)) / n
    ybar, xbar = np.nan_to_num(ybar), np.nan_to_num(xbar)
    X = float(np.sum(N * xbar))
    if X <= 0:
        return float("nan"), float("nan"), m
    R = float(np.sum(N * ybar)) / X
    dy, dx = y - ybar[h], x - xbar[h]
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = np.bincount(h, weights=(dy - R * dx) ** 2, minlength=len(N)) / (
            n - 1
        )  # s2_y + R^2 s2_x - 2R s_xy
        term = np.where(n >= N, 0.0, N**2 * (1 - n / N) * s2 / n)
    term = np.where(N == 0, 0.0, term)
    return R, float(np.sum(term)) / X**2, m


def _overall_bounds(overall: float, h: np.ndarray, right: np.ndarray, N: np.ndarray) -> tuple[float, float]:
    """Wilson's interval of overall accuracy at ``p (1 - p) / V~``, where ``V~`` is the stratified
    variance with each stratum's share right smoothed to Jeffreys' ``(x_h + 1/2) / (n_h + 1)``: a
    stratum whose sampled chips are all right (or all wrong) still adds variance. Unlike the sampled map's
    own interval it is not capped at a simple random sample's: the other map's errors follow the strata
    (where the sampled map is right the other is mostly right too), a real gain the cap would throw away
    (``benchmarks/map_accuracy.py --other``, 16 designs on UCM's and SIRI-WHU's maps: coverage
    0.949-0.995, the normal interval's 0.931-0.952; up to 1.4x narrower than the capped interval on UCM,
    as wide on SIRI-WHU)."""
    n = np.bincount(h, minlength=len(N)).astype(np.float64)
    x = np.bincount(h, weights=right, minlength=len(N))
    W = N / N.sum()
    p = (x + 0.5) / (n + 1)
    var = float(np.sum(W**2 * p * (1 - p) * variance_factor(n, N)))
    if not np.isfinite(overall) or not np.isfinite(var):
        return float("nan"), float("nan")
    return wilson(overall, overall * (1 - overall) / var) if var > 0 else (overall, overall)


def estimate_other_map(
    strata: np.ndarray,
    ref: np.ndarray,
    other: np.ndarray,
    sizes: np.ndarray,
    other_sizes: np.ndarray,
    agreement: float,
) -> OtherMapEstimates:
    """Map B's overall, user's and producer's accuracy from a sample stratified by map A.

    Args:
        strata: Each sampled chip's class in map A (its stratum).
        ref: Its reference class.
        other: Its class in map B.
        sizes: ``N_h``, chips of each of A's classes in the archive.
        other_sizes: Chips of each of B's classes in the archive (the cap of a user's accuracy's
            effective sample size).
        agreement: The share of the archive where A and B agree (reported with the estimates).

    Returns:
        The :class:`OtherMapEstimates`.
    """
    h = np.asarray(strata, dtype=np.int64)
    r = np.asarray(ref, dtype=np.int64)
    b = np.asarray(other, dtype=np.int64)
    c = len(sizes)
    ones = np.ones(len(h))
    right = (b == r).astype(np.float64)
    overall, v_overall, _ = stratified_ratio(h, right, ones, sizes)
    lo, hi = _overall_bounds(overall, h, right, np.asarray(sizes, dtype=np.float64))
    out: dict[str, list[float]] = {k: [] for k in ("u", "su", "ul", "uh", "p", "sp", "pl", "ph")}
    for k in range(c):
        hit = ((b == k) & (r == k)).astype(np.float64)
        for key, x, units in (("u", b == k, other_sizes[k]), ("p", r == k, np.inf)):
            est, var, m = stratified_ratio(h, hit, x.astype(np.float64), sizes)
            # a reference class's chips in the archive are unknown: no finite-population cap for it
            low, high = capped_wilson(est, var, m, float(units))
            out[key].append(est)
            out["s" + key].append(float(np.sqrt(var)) if np.isfinite(var) else float("nan"))
            out[key + "l"].append(low)
            out[key + "h"].append(high)
    counts = np.zeros((c, c), dtype=np.int64)
    np.add.at(counts, (b, r), 1)
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    return OtherMapEstimates(
        overall=overall,
        se_overall=float(np.sqrt(v_overall)),
        overall_low=lo,
        overall_high=hi,
        users=arr["u"],
        se_users=arr["su"],
        users_low=arr["ul"],
        users_high=arr["uh"],
        producers=arr["p"],
        se_producers=arr["sp"],
        producers_low=arr["pl"],
        producers_high=arr["ph"],
        counts=counts,
        agreement=float(agreement),
    )
