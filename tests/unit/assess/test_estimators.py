"""The map-accuracy math (plain numpy): Olofsson et al. (2014)'s worked example, the allocation, the
draw, the standard errors against the spread of repeated samples, and the intervals."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.assess.estimators import (
    Z95,
    allocate,
    draw,
    estimate,
    intervals,
    normal_intervals,
    overall_interval,
    posterior_intervals,
    wilson,
)

# Olofsson et al. (2014), Remote Sens. Environ. 148, table 8: rows = map class (deforestation,
# forest gain, stable forest, stable non-forest), columns = reference class; mapped pixels of 30 m.
TABLE8 = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
MAPPED = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def _sample_of(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = len(counts)
    return np.repeat(np.repeat(np.arange(c), c), counts.ravel()), np.repeat(
        np.tile(np.arange(c), c), counts.ravel()
    )


def test_olofsson_2014_worked_example() -> None:
    e = estimate(*_sample_of(TABLE8), MAPPED)
    # the paper's p. 54, to its rounding
    np.testing.assert_allclose(e.users, [0.88, 0.73, 0.93, 0.96], atol=0.005)
    np.testing.assert_allclose(Z95 * e.se_users, [0.07, 0.10, 0.04, 0.02], atol=0.005)
    np.testing.assert_allclose(e.producers, [0.75, 0.85, 0.93, 0.96], atol=0.005)
    assert e.overall == pytest.approx(0.95, abs=0.005) and Z95 * e.se_overall == pytest.approx(
        0.02, abs=0.005
    )
    hectares = MAPPED.sum() * 0.09
    np.testing.assert_allclose(e.area * hectares, [21_158, 11_686, 285_770, 581_386], atol=1)
    np.testing.assert_allclose(Z95 * e.se_area * hectares, [6_158, 3_756, 15_510, 16_282], atol=2)
    assert e.counts.tolist() == TABLE8.tolist() and e.proportions.sum() == pytest.approx(1.0)


def test_allocate_floor_then_proportion() -> None:
    n = allocate(np.array([5, 100, 1000, 0, 20_000]), 300, 50)
    assert n.sum() == 300 and n.tolist()[:4] == [5, 50, 50, 0]  # the whole small class, floors, none of 0
    assert n[4] == 195
    prop = allocate(np.array([100, 300, 600]), 100, 0)
    assert prop.tolist() == [10, 30, 60]
    assert allocate(np.array([1, 3, 1000]), 10, 0).tolist() == [1, 2, 7]  # 2 a stratum even proportionally
    assert allocate(np.array([10, 20]), 100, 50).tolist() == [10, 20]  # more than the map: every chip
    tight = allocate(np.array([40, 40, 4000]), 60, 50)  # floors over n: equal shares
    assert tight.tolist() == [20, 20, 20]
    with pytest.raises(ValueError):
        allocate(np.array([-1, 3]), 2)


def test_draw_is_stratified_seeded_and_shuffled() -> None:
    strata = np.repeat(np.arange(3), [50, 30, 200])
    sizes = np.array([10, 5, 20])
    idx = draw(strata, sizes, seed=3)
    assert len(set(idx.tolist())) == 35 and np.bincount(strata[idx], minlength=3).tolist() == [10, 5, 20]
    assert (draw(strata, sizes, seed=3) == idx).all() and not (draw(strata, sizes, seed=4) == idx).all()
    assert not (np.diff(strata[idx]) >= 0).all()  # not grouped by stratum: the order gives nothing away
    with pytest.raises(ValueError, match="stratum 1 has 30"):
        draw(strata, np.array([1, 31, 1]), seed=0)


def test_estimate_rejects_what_it_cannot_estimate() -> None:
    with pytest.raises(ValueError, match=r"map classes \[1\]"):
        estimate(np.array([0, 0]), np.array([0, 1]), np.array([10, 5]))
    with pytest.raises(ValueError, match="one length"):
        estimate(np.array([0, 0]), np.array([0]), np.array([10, 5]))
    with pytest.raises(ValueError, match=r"in 0\.\.1"):
        estimate(np.array([0, 2]), np.array([0, 1]), np.array([10, 5]))


def test_a_stratum_sampled_whole_adds_no_variance_and_one_chip_gives_none() -> None:
    whole = estimate(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 0, 1, 1]), np.array([3, 50]))
    assert whole.se_users[0] == 0 and whole.users[0] == pytest.approx(2 / 3)
    once = estimate(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([10, 50]))
    assert np.isnan(once.se_users[0]) and np.isnan(once.se_overall)


def test_standard_errors_match_the_spread_of_repeated_samples() -> None:
    """On a known population the SEs the estimator reports match how its estimates actually vary."""
    rng = np.random.default_rng(0)
    sizes = np.array([600, 900, 6000, 12_000])
    conf = np.array(
        [[0.85, 0.05, 0.05, 0.05], [0.02, 0.8, 0.1, 0.08], [0.01, 0.02, 0.93, 0.04], [0.01, 0.01, 0.03, 0.95]]
    )
    pred = np.repeat(np.arange(4), sizes)
    ref = np.array([rng.choice(4, p=conf[m]) for m in pred])
    n = allocate(sizes, 400, 50)
    runs = [estimate(pred[i], ref[i], sizes) for i in (draw(pred, n, s) for s in range(600))]
    for name in ("overall", "users", "producers", "area"):
        values = np.array([getattr(e, name) for e in runs])
        se = np.array([getattr(e, f"se_{name}") for e in runs]).mean(axis=0)
        np.testing.assert_allclose(values.std(axis=0), se, rtol=0.15, err_msg=name)
    truth = (pred == ref).mean()
    assert np.mean([e.overall for e in runs]) == pytest.approx(truth, abs=0.003)  # unbiased


def test_wilson() -> None:
    lo, hi = wilson(1.0, 14)
    assert lo == pytest.approx(0.7847, abs=1e-4) and hi == 1.0
    np.testing.assert_allclose(wilson(0.5, 100), (0.4038, 0.5962), atol=1e-4)
    assert wilson(0.9, float("inf")) == (0.9, 0.9) and np.isnan(wilson(0.9, 0)[0])


def test_intervals_do_not_collapse_where_the_sample_shows_no_error() -> None:
    """14 of 14 right: the normal interval of user's accuracy is the point 1, the reported one is not;
    a class with no error seen anywhere still gets a producer's interval below 1."""
    m = np.repeat(np.arange(3), 14)
    r = m.copy()
    r[20] = 2  # one chip of map class 1 is class 2
    e = estimate(m, r, np.array([1000, 1000, 1000]))
    normal, reported = normal_intervals(e), intervals(e, seed=0)
    assert normal["users"][0][0] == 1.0 and reported["users"][0][0] < 0.8
    assert normal["producers"][0][0] == 1.0 and reported["producers"][0][0] < 0.99
    for name in ("users", "producers", "area"):
        lo, hi = reported[name]
        est = getattr(e, name)
        assert (lo <= est + 1e-9).all() and (est <= hi + 1e-9).all(), name
    (lo, hi), (nlo, nhi) = reported["overall"], normal["overall"]
    assert lo <= e.overall <= hi and hi - lo >= nhi - nlo  # never narrower than a simple random sample's
    again = intervals(e, seed=0)
    np.testing.assert_array_equal(again["area"][0], reported["area"][0])  # seeded: the same report twice


def test_posterior_of_a_map_sampled_whole_is_the_map() -> None:
    m = np.array([0, 0, 1, 1, 1])
    r = np.array([0, 1, 1, 1, 0])
    e = estimate(m, r, np.array([2, 3]))
    post = posterior_intervals(e.counts, e.sizes, draws=200)
    for name in ("overall", "users", "producers", "area"):
        lo, hi = post[name]
        np.testing.assert_allclose(lo, hi)
        np.testing.assert_allclose(lo, getattr(e, name))


def test_overall_interval_is_capped_at_a_simple_random_sample() -> None:
    """Every sampled chip right in 3 of 4 strata: the stratified SE counts only the 4th stratum's
    errors and is below a simple random sample's; the reported interval is Wilson's for the 40 chips."""
    m = np.repeat(np.arange(4), 10)
    r = m.copy()
    r[[35, 36]] = 0
    e = estimate(m, r, np.array([500, 500, 500, 500]))
    lo, hi = overall_interval(e)
    n_eff = 40 / (1 - 40 / 2000)  # a simple random sample of 40 of the 2,000 chips
    wlo, whi = wilson(e.overall, n_eff)
    assert lo == pytest.approx(wlo) and hi == pytest.approx(whi)
    assert normal_intervals(e)["overall"][0] > lo  # the normal one is narrower than that
    census = estimate(m, r, np.array([10, 10, 10, 10]))  # the whole map labeled: known exactly
    assert overall_interval(census) == (pytest.approx(0.95), pytest.approx(0.95))
