"""How many chips to label: the sample size a map's accuracy assessment needs (plain numpy, no Ray).

The 95% intervals ``python -m hssal_ray.assess estimate`` will report depend on three things known
before anyone labels a chip: the map's class sizes ``N_i``, the allocation of the sample to them
(:func:`~hssal_ray.assess.estimators.allocate`) and each class's user's accuracy ``U_i``, which is
unknown but can be anticipated (the model's mean confidence on the chips it gives the class, or a
number the user believes). :func:`expected_halfwidths` computes the half-widths the estimate would
report if each stratum's sample showed exactly its anticipated accuracy, with the estimate's own
formulas (the stratified variance with its finite-population correction, Wilson's interval at the
design's effective sample size); :func:`plan_sample` searches the smallest ``n`` that reaches a target.

Olofsson et al. (2014, eq. 13) plan ``n`` with Cochran's formula ``n = (sum_i W_i S_i / S(O))^2``,
``S_i = sqrt(U_i (1 - U_i))``, which is the sample size under Neyman allocation; the sample ``assess
sample`` draws is allocated differently (a floor per class, the rest in proportion), and its overall
accuracy's standard error at that ``n`` is larger. Planning on the allocation that will be drawn gives
the ``n`` that design needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hssal_ray.assess.estimators import allocate, overall_bounds, users_bounds, variance_factor

__all__ = ["Plan", "expected_halfwidths", "plan_sample"]


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_sample` gives.

    Attributes:
        n: Chips to label.
        min_per_class: The floor per map class the sample is to be drawn with.
        sample_sizes: ``n_i``, chips per map class (``allocate(sizes, n, min_per_class)``).
        overall: The anticipated overall accuracy ``sum_i W_i U_i``.
        overall_halfwidth: Half the width of its expected 95% interval.
        users_halfwidth: The same for each class's user's accuracy (NaN for a class not in the map).
    """

    n: int
    min_per_class: int
    sample_sizes: np.ndarray
    overall: float
    overall_halfwidth: float
    users_halfwidth: np.ndarray


def expected_halfwidths(
    sizes: np.ndarray, sample_sizes: np.ndarray, accuracy: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """The anticipated overall accuracy and the half-widths of the 95% intervals of overall and each
    user's accuracy that the estimate reports when stratum ``i``'s ``n_i`` chips are right in the
    proportion ``accuracy[i]`` (half the interval's width: Wilson's interval is not symmetric).

    Args:
        sizes: ``N_i``, chips per map class.
        sample_sizes: ``n_i`` (:func:`~hssal_ray.assess.estimators.allocate`).
        accuracy: The anticipated user's accuracy ``U_i`` of each class, in ``[0, 1]``.

    Returns:
        ``(overall, overall_halfwidth, users_halfwidth)``.
    """
    N = np.asarray(sizes, dtype=np.float64)
    n = np.asarray(sample_sizes, dtype=np.float64)
    u = np.asarray(accuracy, dtype=np.float64)
    if not (N.shape == n.shape == u.shape) or N.ndim != 1:
        raise ValueError(
            f"sizes, sample_sizes and accuracy must be 1-D of one length: {N.shape}, {n.shape}, {u.shape}"
        )
    if ((u < 0) | (u > 1)).any() or np.isnan(u[N > 0]).any():
        raise ValueError("every anticipated accuracy must be in [0, 1]")
    W = N / N.sum()
    u = np.where(N > 0, u, 0.0)
    overall = float(np.sum(W * u))
    var = float(np.sum(W**2 * u * (1 - u) * variance_factor(n, N)))
    lo, hi = overall_bounds(overall, var, n, N)
    users = users_bounds(u, n, N)
    users_half = np.where(N > 0, (users[:, 1] - users[:, 0]) / 2, np.nan)
    return overall, (hi - lo) / 2, users_half


def _class_floor(sizes: np.ndarray, accuracy: np.ndarray, target: float) -> int:
    """The smallest floor per class at which every class's user's accuracy is within ``+-target``."""
    need = 2
    for N_i, u in zip(np.asarray(sizes), np.asarray(accuracy, dtype=np.float64), strict=True):
        if N_i == 0:
            continue
        lo, hi = 2, int(N_i)  # at N_i (the whole class) the half-width is 0
        while lo < hi:
            mid = (lo + hi) // 2
            b = users_bounds(np.array([u]), np.array([mid]), np.array([N_i]))[0]
            if (b[1] - b[0]) / 2 <= target:
                hi = mid
            else:
                lo = mid + 1
        need = max(need, lo)
    return need


def plan_sample(
    sizes: np.ndarray,
    accuracy: np.ndarray,
    *,
    halfwidth: float = 0.02,
    class_halfwidth: float | None = None,
    min_per_class: int = 50,
) -> Plan:
    """The smallest sample whose overall accuracy's expected 95% interval is within ``+-halfwidth``
    (and, with ``class_halfwidth``, every class's user's accuracy within ``+-class_halfwidth``).

    The floor per class is ``min_per_class``, raised to what ``class_halfwidth`` needs; the rest of the
    sample goes to the classes in proportion to their size, as ``assess sample`` draws it.

    Args:
        sizes: ``N_i``, chips per map class.
        accuracy: Each class's anticipated user's accuracy.
        halfwidth: The target for overall accuracy (e.g. 0.02 for +-2 points).
        class_halfwidth: The target for every class's user's accuracy (None: none).
        min_per_class: The floor per class (:func:`~hssal_ray.assess.estimators.allocate`).

    Returns:
        The :class:`Plan` (the whole map when nothing smaller reaches the targets).
    """
    if not 0 < halfwidth < 0.5 or (class_halfwidth is not None and not 0 < class_halfwidth < 0.5):
        raise ValueError(f"half-widths must be in (0, 0.5), got {halfwidth}, {class_halfwidth}")
    if min_per_class < 0:
        raise ValueError(f"min_per_class must be >= 0, got {min_per_class}")
    N = np.asarray(sizes, dtype=np.int64)
    u = np.asarray(accuracy, dtype=np.float64)
    floor = (
        min_per_class if class_halfwidth is None else max(min_per_class, _class_floor(N, u, class_halfwidth))
    )
    total = int(N.sum())

    def half(k: int) -> float:
        return expected_halfwidths(N, allocate(N, k, floor), u)[1]

    lo, hi = min(int(np.minimum(N, max(floor, 2)).sum()), total), total
    while lo < hi:  # the half-width falls as n grows (up to rounding, which may move one chip)
        mid = (lo + hi) // 2
        if half(mid) <= halfwidth:
            hi = mid
        else:
            lo = mid + 1
    n_i = allocate(N, lo, floor)
    overall, oa_half, users_half = expected_halfwidths(N, n_i, u)
    return Plan(lo, floor, n_i, overall, oa_half, users_half)
