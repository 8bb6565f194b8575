"""Known-answer and property tests of the uncertainty scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hssal_ray.errors import DataError
from hssal_ray.query.uncertainty import (
    badge_norm,
    committee,
    compute_all,
    disagreement,
    entropy,
    least_confidence,
    margin,
    score_column,
)

UNIFORM = np.full((1, 4), 0.25, dtype=np.float32)
ONEHOT = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
TWO = np.array([[0.5, 0.5, 0.0, 0.0]], dtype=np.float32)
SKEW = np.array([[0.7, 0.2, 0.1, 0.0]], dtype=np.float32)


def test_known_answers() -> None:
    assert entropy(UNIFORM)[0] == pytest.approx(math.log(4), rel=1e-6)
    assert entropy(ONEHOT)[0] == 0.0
    assert entropy(TWO)[0] == pytest.approx(math.log(2), rel=1e-6)
    assert margin(TWO)[0] == pytest.approx(1.0)
    assert margin(ONEHOT)[0] == pytest.approx(0.0)
    assert margin(SKEW)[0] == pytest.approx(1 - 0.5)
    assert least_confidence(SKEW)[0] == pytest.approx(0.3)
    assert least_confidence(UNIFORM)[0] == pytest.approx(0.75)


def test_badge_norm_known_answer() -> None:
    h = np.array([[3.0, 4.0]], dtype=np.float16)  # ||h|| = 5
    # p - onehot(0) = (-0.3, 0.2, 0.1, 0): norm sqrt(0.14)
    assert badge_norm(SKEW, h)[0] == pytest.approx(5 * math.sqrt(0.14), rel=1e-3)
    assert badge_norm(ONEHOT, h)[0] == pytest.approx(0.0, abs=1e-6)


def test_disagreement_flip_scores_one_plus_tv_else_tv() -> None:
    a = np.array([[0.6, 0.4], [0.9, 0.1], [0.55, 0.45], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[0.4, 0.6], [0.7, 0.3], [0.45, 0.55], [0.0, 1.0]], dtype=np.float32)
    got = disagreement(a, b)
    np.testing.assert_allclose(got, [1.2, 0.2, 1.1, 2.0], atol=1e-6)
    assert got[2] < got[0] < got[3]  # flips are ordered among themselves, not tied at 1
    with pytest.raises(DataError, match="shape"):
        disagreement(a, b[:1])


def test_committee_is_the_margin_of_the_members_mean() -> None:
    student = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1]], np.float32)
    teacher = np.array([[0.1, 0.9, 0.0], [0.6, 0.4, 0.0], [np.nan] * 3], np.float32)
    graph = np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0], [np.nan] * 3], np.float16)
    got = committee(student, [teacher, graph])
    # row 0: the three disagree, the mean is a tie -> 1; row 1: all agree -> the plain margin;
    # row 2: no member saw it (NaN) -> the student's own margin
    np.testing.assert_allclose(got, [1.0, 0.8, 0.5], atol=1e-3)
    np.testing.assert_allclose(committee(student, []), margin(student), atol=1e-6)
    assert "u_committee" not in compute_all(student, None)
    np.testing.assert_allclose(compute_all(student, None, members=[teacher, graph])["u_committee"], got)
    with pytest.raises(DataError, match="committee member has shape"):
        committee(student, [teacher[:2]])


def test_compute_all_columns_and_torch_input() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=40).astype(np.float32)
    h = rng.standard_normal((40, 8)).astype(np.float16)
    out = compute_all(torch.from_numpy(p), torch.from_numpy(h))
    assert list(out) == ["u_badge", "u_entropy", "u_margin", "u_least_confidence"]
    assert all(v.shape == (40,) and v.dtype == np.float32 for v in out.values())
    assert "u_disagreement" in compute_all(p, None, p[::-1].copy())
    assert "u_badge" not in compute_all(p, None)
    assert score_column("badge") == "u_badge"
    with pytest.raises(ValueError, match="valid"):
        score_column("bald")


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(7), size=1001)
    h = rng.standard_normal((1001, 16))
    np.testing.assert_allclose(badge_norm(p, h, chunk_size=64), badge_norm(p, h), rtol=1e-6)
    np.testing.assert_allclose(entropy(p, chunk_size=10), entropy(p), rtol=1e-6)


def test_shape_errors() -> None:
    with pytest.raises(DataError, match="2-D"):
        entropy(np.ones(3))
    with pytest.raises(DataError, match="rows"):
        badge_norm(np.ones((3, 2)) / 2, np.ones((4, 2)))


probs_strategy = arrays(
    np.float64, st.tuples(st.integers(1, 20), st.integers(1, 12)), elements=st.floats(0.0, 1.0)
).filter(lambda a: (a.sum(1) > 1e-3).all())


@settings(max_examples=60, deadline=None)
@given(probs_strategy)
def test_score_ranges(raw: np.ndarray) -> None:
    p = raw / raw.sum(1, keepdims=True)
    n, c = p.shape
    e, m, lc = entropy(p), margin(p), least_confidence(p)
    assert np.all(e >= 0) and np.all(e <= math.log(c) + 1e-5)
    assert np.all(m >= -1e-6) and np.all(m <= 1 + 1e-6)
    assert np.all(lc >= -1e-6) and np.all(lc <= 1 - 1 / c + 1e-5)
    h = np.ones((n, 3)) / math.sqrt(3)
    b = badge_norm(p, h)
    assert np.all(b >= 0) and np.all(b <= math.sqrt(2) + 1e-5)
    # a one-hot prediction is never more uncertain than the row itself
    onehot = np.eye(c)[p.argmax(1)]
    assert np.all(entropy(onehot) <= e + 1e-6) and np.all(badge_norm(onehot, h) <= b + 1e-6)


@settings(max_examples=40, deadline=None)
@given(probs_strategy)
def test_disagreement_symmetric_and_zero_on_self(raw: np.ndarray) -> None:
    p = raw / raw.sum(1, keepdims=True)
    q = p[::-1].copy()
    np.testing.assert_allclose(disagreement(p, q), disagreement(q, p), atol=1e-6)
    np.testing.assert_allclose(disagreement(p, p), 0.0, atol=1e-6)
