"""The stabilizing-predictions stop rule's pieces: kappa, the stop set, the window (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hssal_ray.query.scores_io import write_scores
from hssal_ray.rounds.stability import kappa, prediction_agreement, read_predictions, settled


def test_kappa_matches_its_definition() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    b = np.array([0, 1, 1, 1, 2, 0, 0, 1])
    po = np.mean(a == b)
    pe = sum(np.mean(a == k) * np.mean(b == k) for k in range(3))
    assert kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert kappa(a, a) == 1.0
    assert kappa(np.zeros(5, int), np.zeros(5, int)) == 1.0  # one class only: sklearn's 0/0
    assert math.isnan(kappa(np.array([], int), np.array([], int)))
    with pytest.raises(ValueError, match="one length"):
        kappa(a, b[:3])


def test_agreement_aligns_by_id_and_leaves_out_labeled_and_unshared_rows() -> None:
    prev_ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    prev = np.array([0, 1, 1, 2, 0])
    ids = np.array(["e", "d", "c", "b", "x"], dtype=object)  # another order; "a" gone, "x" new
    pred = np.array([0, 2, 0, 1, 1])  # "c" changed 1 -> 0
    out = prediction_agreement(prev_ids, prev, ids, pred, labeled=["b"])
    assert out["stability_rows"] == 3  # e, d, c: "b" is labeled, "a" and "x" are in one round only
    assert out["stability_changed"] == pytest.approx(1 / 3)
    assert out["stability_kappa"] == pytest.approx(kappa(np.array([0, 2, 1]), np.array([0, 2, 0])))
    empty = prediction_agreement(prev_ids, prev, np.array(["x"], dtype=object), np.array([1]))
    assert empty["stability_rows"] == 0 and math.isnan(empty["stability_kappa"])


def test_settled_needs_a_full_window_at_the_threshold() -> None:
    assert settled([0.995, 0.999], 0.99, 3) is None  # two rounds of three
    assert settled([0.5, 0.995, 0.99, 0.999], 0.99, 3) == pytest.approx((0.995 + 0.99 + 0.999) / 3)
    assert settled([0.99, 0.98, 0.999], 0.99, 3) is None  # mean 0.9897
    assert settled([0.999, float("nan"), 0.999], 0.9, 3) is None  # a round without a stop set
    assert settled([1.0, 1.0, 1.0], 0.0, 3) is None  # 0 = off
    assert settled([0.95], 0.95, 1) == pytest.approx(0.95)


def test_read_predictions_takes_pred_or_the_argmax_of_probs(tmp_path) -> None:
    ids = ["s0", "s1", "s2"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    write_scores(str(tmp_path / "p.parquet"), ids, probs=probs, pred=np.array([1, 1, 1]), num_parts=2)
    got_ids, pred = read_predictions(str(tmp_path / "p.parquet"))
    assert list(got_ids) == ids and pred.tolist() == [1, 1, 1]  # the column, not the argmax
    write_scores(str(tmp_path / "q.parquet"), ids, probs=probs)
    assert read_predictions(str(tmp_path / "q.parquet"))[1].tolist() == [0, 1, 0]
