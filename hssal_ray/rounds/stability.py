"""When more labels stop changing the model: the stabilizing-predictions stop rule. No Ray.

Bloodgood & Vijay-Shanker (2009, "A method for stopping active learning based on stabilizing predictions
and the need for user-adjustable stopping", CoNLL) stop active learning once successive models agree on
the predictions of a set of unlabeled rows: Cohen's kappa between round ``r - 1``'s and round ``r``'s
predicted classes, averaged over the last ``window`` rounds, at least a threshold (theirs: 0.99 over 3
rounds; small-text's ``KappaAverage``). It needs no labels beyond the oracle's, so it works with a person
as the oracle, where no test accuracy tells the user that the next batch is not worth labeling.

Here the stop set is the rows both rounds scored (``scores.parquet``: the whole training split, or with
``query.pool_sample`` the two rounds' samples' overlap) that are not labeled: the rows neither model
was told the class of. Kappa is sklearn's :func:`~sklearn.metrics.cohen_kappa_score`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["prediction_agreement", "kappa", "settled", "row_kappa", "kappas_of", "read_predictions"]


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two label vectors; 1.0 where they agree on every row (sklearn says NaN when
    both predict one class only: chance agreement is then 1 and kappa 0/0)."""
    from sklearn.metrics import cohen_kappa_score

    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two label vectors of one length are needed, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0
    return float(cohen_kappa_score(a, b))


def prediction_agreement(
    prev_ids: np.ndarray,
    prev_pred: np.ndarray,
    ids: np.ndarray,
    pred: np.ndarray,
    labeled: Sequence[str] | np.ndarray = (),
) -> dict[str, float | int]:
    """How much the predictions moved between two rounds, on the rows both scored and none labeled.

    Args:
        prev_ids, prev_pred: the earlier round's (n0,) sample ids and predicted classes.
        ids, pred: the later round's (n1,) sample ids and predicted classes.
        labeled: ids labeled by the later round (left out of the stop set).

    Returns:
        ``stability_kappa`` (Cohen's kappa, NaN on an empty stop set), ``stability_changed`` (the
        fraction of stop-set rows whose predicted class changed) and ``stability_rows`` (its size).
    """
    ids_a = pa.array(np.asarray(ids, dtype=object), type=pa.string())
    at = pc.index_in(ids_a, value_set=pa.array(np.asarray(prev_ids, dtype=object), type=pa.string()))
    keep = at.is_valid().to_numpy(zero_copy_only=False)
    if len(labeled):
        lab = pa.array(np.asarray(labeled, dtype=object), type=pa.string())
        keep &= ~pc.is_in(ids_a, value_set=lab).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(keep)
    before = np.asarray(prev_pred)[at.to_numpy(zero_copy_only=False)[rows].astype(np.int64)]
    after = np.asarray(pred)[rows]
    n = int(rows.size)
    return {
        "stability_kappa": kappa(before, after),
        "stability_changed": float(np.mean(before != after)) if n else float("nan"),
        "stability_rows": n,
    }


def settled(kappas: Sequence[float], threshold: float, window: int) -> float | None:
    """The mean of the last ``window`` kappas when there are that many and it reaches ``threshold``
    (the run may stop), else None. A NaN kappa (an empty stop set) never counts as settled."""
    if threshold <= 0 or window < 1 or len(kappas) < window:
        return None
    last = [float(k) for k in kappas[-window:]]
    if any(math.isnan(k) for k in last):
        return None
    mean = sum(last) / window
    return mean if mean >= threshold else None


def row_kappa(row: Mapping[str, Any]) -> float:
    """A ``metrics.jsonl`` row's ``stability_kappa``; NaN where the round has none (round 0, unscored)."""
    k = row.get("stability_kappa")
    return float("nan") if k is None else float(k)


def kappas_of(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """The ``stability_kappa`` of each ``metrics.jsonl`` row from round 1 on (NaN where a round has none)."""
    return [row_kappa(row) for row in rows if int(row["round"]) >= 1]


def read_predictions(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, pred)`` of a scores file: its ``pred`` column, or the argmax of ``probs`` without one."""
    from hssal_ray.query.scores_io import load_pool, scores_columns

    if "pred" in scores_columns(path):
        pool = load_pool(path, ["pred"])
        return pool.ids, np.asarray(pool.pred)
    pool = load_pool(path, ["probs"])
    return pool.ids, np.asarray(pool.probs).argmax(1)
