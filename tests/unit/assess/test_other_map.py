"""Stehman's (2014) estimators: another map assessed from a sample stratified by the first (plain numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.assess import allocate, draw, estimate
from hssal_ray.assess.other_map import estimate_other_map, stratified_ratio


def _population(seed: int = 0, n: int = 5000, c: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.choice(c, n, p=[0.5, 0.25, 0.15, 0.1])
    a = np.where(rng.random(n) < 0.85, ref, rng.integers(0, c, n))
    b = np.where(rng.random(n) < 0.8, ref, rng.integers(0, c, n))
    return ref, a, b


def test_a_stratified_ratio_by_hand() -> None:
    # stratum 0: 100 chips, sample y = [1, 0], x = [1, 1]; stratum 1: 50 chips, y = [1, 1, 0], x = [1, 1, 0]
    h = np.array([0, 0, 1, 1, 1])
    y, x = np.array([1.0, 0, 1, 1, 0]), np.array([1.0, 1, 1, 1, 0])
    r, v, m = stratified_ratio(h, y, x, np.array([100, 50]))
    Y, X = 100 * 0.5 + 50 * 2 / 3, 100 * 1 + 50 * 2 / 3
    assert r == pytest.approx(Y / X) and m == 4
    d0 = np.array([1, 0]) - r * np.array([1, 1])
    d1 = np.array([1, 1, 0]) - r * np.array([1, 1, 0])
    s0, s1 = np.var(d0, ddof=1), np.var(d1, ddof=1)
    want = (100**2 * (1 - 2 / 100) * s0 / 2 + 50**2 * (1 - 3 / 50) * s1 / 3) / X**2
    assert v == pytest.approx(want)


def test_the_sampled_map_itself_gives_olofssons_estimates() -> None:
    ref, a, _ = _population()
    sizes = np.bincount(a, minlength=4)
    idx = draw(a, allocate(sizes, 300, 30), 1)
    e = estimate(a[idx], ref[idx], sizes)
    o = estimate_other_map(a[idx], ref[idx], a[idx], sizes, sizes, 1.0)
    assert (o.overall, o.se_overall) == pytest.approx((e.overall, e.se_overall))
    for mine, theirs in (("users", "users"), ("se_users", "se_users"), ("producers", "producers")):
        np.testing.assert_allclose(getattr(o, mine), getattr(e, theirs))
    np.testing.assert_allclose(o.se_producers, e.se_producers)


def test_another_map_is_estimated_without_bias_and_its_intervals_hold() -> None:
    ref, a, b = _population()
    sizes, b_sizes = np.bincount(a, minlength=4), np.bincount(b, minlength=4)
    n_i = allocate(sizes, 300, 30)
    oa = float(np.mean(b == ref))
    ua = np.array([np.mean(ref[b == k] == k) for k in range(4)])
    pa = np.array([np.mean(b[ref == k] == k) for k in range(4)])
    rows = []
    for s in range(400):
        idx = draw(a, n_i, s)
        o = estimate_other_map(a[idx], ref[idx], b[idx], sizes, b_sizes, float(np.mean(a == b)))
        rows.append(
            [o.overall, o.se_overall, o.overall_low <= oa <= o.overall_high]
            + list((o.users_low <= ua) & (ua <= o.users_high))
            + list((o.producers_low <= pa) & (pa <= o.producers_high))
        )
    r = np.array(rows, dtype=float)
    assert r[:, 0].mean() == pytest.approx(oa, abs=0.004)  # unbiased
    assert r[:, 1].mean() == pytest.approx(r[:, 0].std(), rel=0.15)  # the SE is the spread
    cover = r[:, 2:].mean(axis=0)
    assert (cover > 0.91).all() and (cover < 0.995).all(), cover
