"""``assess plan``'s math: the sample size for a target interval width, on the allocation that will be
drawn (plain numpy, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.assess import allocate, draw, estimate
from hssal_ray.assess.estimators import Z95, overall_interval
from hssal_ray.assess.planning import expected_halfwidths, plan_sample


def test_agrees_with_the_textbook_formulas_on_a_huge_map() -> None:
    """Proportional allocation: the stratified variance ``sum W_i U_i (1 - U_i) / n`` is below a simple
    random sample's ``A (1 - A) / n``, and the estimate's interval is never narrower than that sample's
    (:func:`overall_interval`), so the plan is Cochran's ``n = z^2 A (1 - A) / h^2`` (up to Wilson's
    interval, a little wider than the normal one). Equal allocation to unequal strata has a larger
    variance, ``sum W_i^2 U_i (1 - U_i) / n_i``, and the plan follows it."""
    sizes = np.array([4_000_000, 2_500_000, 2_000_000, 1_000_000, 500_000])
    u = np.array([0.95, 0.9, 0.85, 0.8, 0.7])
    W = sizes / sizes.sum()
    A = np.sum(W * u)
    for h in (0.01, 0.02, 0.03):
        plan = plan_sample(sizes, u, halfwidth=h, min_per_class=0)
        srs = Z95**2 * A * (1 - A) / h**2
        assert srs <= plan.n <= 1.01 * srs, (h, plan.n, srs)
        assert plan.overall == pytest.approx(A)
    k = np.full(len(sizes), 2000)  # equal allocation
    var = np.sum(W**2 * u * (1 - u) / (k - 1))
    assert var > A * (1 - A) / k.sum()
    assert expected_halfwidths(sizes, k, u)[1] == pytest.approx(Z95 * np.sqrt(var), rel=0.01)


def test_the_plan_is_the_smallest_sample_that_meets_the_targets() -> None:
    sizes = np.array([5000, 3000, 800, 150, 40])
    u = np.array([0.95, 0.9, 0.8, 0.75, 0.6])
    plan = plan_sample(sizes, u, halfwidth=0.02, min_per_class=20)
    assert plan.overall_halfwidth <= 0.02
    assert (plan.sample_sizes == allocate(sizes, plan.n, 20)).all()
    assert expected_halfwidths(sizes, allocate(sizes, plan.n - 1, 20), u)[1] > 0.02
    # a target for every class raises the floor to what the least certain class needs
    both = plan_sample(sizes, u, halfwidth=0.02, class_halfwidth=0.08, min_per_class=20)
    assert both.min_per_class > 20
    assert np.nanmax(both.users_halfwidth) <= 0.08
    lower = allocate(sizes, both.n, both.min_per_class - 1)
    assert np.nanmax(expected_halfwidths(sizes, lower, u)[2]) > 0.08
    # a less accurate map needs more chips; an unreachable target takes the whole map
    assert plan_sample(sizes, u - 0.1, halfwidth=0.02, min_per_class=20).n > plan.n
    tiny = plan_sample(np.array([30, 20]), np.array([0.8, 0.7]), halfwidth=0.01, min_per_class=0)
    assert tiny.n == 50 and tiny.overall_halfwidth == 0.0


def test_the_widths_it_expects_are_the_widths_the_estimate_reports() -> None:
    """Samples of the planned size from a map whose strata are as accurate as anticipated report
    intervals as wide as planned, on average."""
    rng = np.random.default_rng(3)
    sizes = np.array([3000, 1500, 600, 200])
    u = np.array([0.92, 0.85, 0.75, 0.6])
    pred = np.repeat(np.arange(4), sizes)
    ref = pred.copy()
    for i in range(4):  # exactly round(u_i N_i) right, the rest another class
        where = np.flatnonzero(pred == i)
        wrong = rng.choice(where, size=round((1 - u[i]) * len(where)), replace=False)
        ref[wrong] = (i + 1) % 4
    plan = plan_sample(sizes, u, halfwidth=0.03, class_halfwidth=0.12, min_per_class=10)
    n_i = allocate(sizes, plan.n, plan.min_per_class)
    oa, ua = [], []
    for s in range(300):
        idx = draw(pred, n_i, s)
        e = estimate(pred[idx], ref[idx], sizes)
        lo, hi = overall_interval(e)
        oa.append((hi - lo) / 2)
        ua.append((e.users_high - e.users_low) / 2)
    assert np.mean(oa) == pytest.approx(plan.overall_halfwidth, rel=0.05)
    np.testing.assert_allclose(np.mean(ua, axis=0), plan.users_halfwidth, rtol=0.08)


def test_bad_input() -> None:
    sizes = np.array([100, 50])
    with pytest.raises(ValueError, match="half-widths"):
        plan_sample(sizes, np.array([0.9, 0.9]), halfwidth=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plan_sample(sizes, np.array([0.9, 1.2]))
    with pytest.raises(ValueError, match="one length"):
        expected_halfwidths(sizes, np.array([10, 10, 10]), np.array([0.9, 0.9]))
