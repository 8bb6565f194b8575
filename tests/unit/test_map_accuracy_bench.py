"""``benchmarks.map_accuracy``'s measuring parts on a known population (the product runs are the
benchmark's own business): the truth, the long tail, and coverage figures that show the point."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.map_accuracy import _long_tail, coverage, planned, population_truth


def test_population_truth() -> None:
    pred = np.array([0, 0, 0, 1, 1, 2])
    ref = np.array([0, 0, 1, 1, 1, 1])
    t = population_truth(pred, ref, 3)
    assert t["overall"] == pytest.approx(4 / 6)
    np.testing.assert_allclose(t["users"], [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(t["producers"][:2], [1.0, 0.5])
    assert np.isnan(t["producers"][2])  # no chip is class 2
    np.testing.assert_allclose(t["area"], [2 / 6, 4 / 6, 0.0])


def test_long_tail_keeps_fewer_of_each_later_class() -> None:
    ref = np.repeat(np.arange(5), 2000)
    kept = np.bincount(ref[_long_tail(ref, 5, 20.0, seed=7)], minlength=5)
    assert sorted(kept)[0] == pytest.approx(100, rel=0.3) and sorted(kept)[-1] == pytest.approx(
        2000, rel=0.05
    )


def test_coverage_shows_where_the_normal_interval_fails() -> None:
    """A 12-class map at 95% accuracy, 8 chips a class: the normal producer's interval is often a
    point and misses; the product's holds its level."""
    rng = np.random.default_rng(1)
    ref = np.repeat(np.arange(12), 150)
    pred = np.where(rng.random(len(ref)) < 0.95, ref, rng.integers(0, 12, len(ref)))
    r = coverage(pred, ref, 12, 96, 8, draws=60, seed0=0)
    assert r["n"] == 96 and r["true_overall"] == pytest.approx((pred == ref).mean())
    assert r["normal.producers_coverage"] < 0.8 < r["product.producers_coverage"]
    assert r["product.area_coverage"] > 0.85 and r["product.users_coverage"] > 0.85
    assert abs(r["overall_bias"]) < 0.01


def test_planned_separates_a_good_guess_from_an_overconfident_one() -> None:
    """Planning with the truth gives the promised width; a model 10 points overconfident on every class
    plans too few chips, and the measured width says so."""
    rng = np.random.default_rng(2)
    ref = np.repeat(np.arange(4), [3000, 2000, 1000, 500])
    pred = np.where(rng.random(len(ref)) < 0.85, ref, rng.integers(0, 4, len(ref)))
    conf = np.full(len(ref), 0.95)  # the map is about 0.87 right: 0.95 is overconfident
    rows = planned(pred, ref, conf, 4, 0.03, 0.12, 10, draws=80, seed0=0)
    by = {r["planned_from"]: r for r in rows}
    truth, conf_row = by["true user's accuracy"], by["mean confidence"]
    assert truth["halfwidth_mean"] == pytest.approx(truth["expected_halfwidth"], rel=0.05)
    assert conf_row["n"] < truth["n"] and conf_row["halfwidth_mean"] > 1.2 * conf_row["expected_halfwidth"]
    assert conf_row["within_target"] < 0.2 < truth["within_target"]
    assert truth["class_halfwidth_worst_mean"] == pytest.approx(0.12, abs=0.012)


def test_other_coverage_measures_another_map_and_the_change() -> None:
    """Another map assessed from samples of the first: its intervals and the paired change hold about
    their level; the bias of its overall accuracy is small."""
    from benchmarks.map_accuracy import other_coverage

    rng = np.random.default_rng(3)
    ref = np.repeat(np.arange(5), 400)
    a = np.where(rng.random(len(ref)) < 0.9, ref, rng.integers(0, 5, len(ref)))
    b = np.where(rng.random(len(ref)) < 0.75, ref, rng.integers(0, 5, len(ref)))
    r = other_coverage(a, b, ref, 5, 250, 20, draws=80, seed0=0)
    assert r["true_overall"] == pytest.approx((b == ref).mean()) and abs(r["overall_bias"]) < 0.01
    assert r["product.overall_coverage"] > 0.85 and r["product.users_coverage"] > 0.85
    assert r["product.change_coverage"] > 0.85
    assert r["agreement"] == pytest.approx((a == b).mean())
