"""A round's figures: step metrics averaged over the round, and the evaluation's accuracies. No Ray."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MetricMeans", "classification_metrics"]


class MetricMeans:
    """Running means of the per-step metrics of a round; a NaN value is skipped, not averaged.

    A NaN step metric means there was nothing to measure (e.g. pseudo-label accuracy with no
    pseudo-label kept), so each key is averaged over the steps that measured it.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        """Add one step's metrics."""
        for k, v in metrics.items():
            v = float(v)
            if v == v:
                self._sums[k] = self._sums.get(k, 0.0) + v
                self._counts[k] = self._counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        """Each key's mean over the steps that measured it (keys first seen first)."""
        return {k: s / self._counts[k] for k, s in self._sums.items()}


def classification_metrics(
    y: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    other: np.ndarray | None = None,
    eval_model: str = "ema",
    prefix: str = "test",
) -> dict[str, Any]:
    """``{prefix}_accuracy``, balanced and per-class accuracy of ``pred``; with ``other`` (the other
    weights' predictions) also ``{prefix}_accuracy_ema`` and ``{prefix}_accuracy_online``."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    if len(y) == 0:
        return {f"{prefix}_accuracy": float("nan"), f"{prefix}_samples": 0}
    out: dict[str, Any] = {
        f"{prefix}_accuracy": float(accuracy_score(y, pred)),
        f"{prefix}_samples": int(len(y)),
        f"{prefix}_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        f"{prefix}_per_class_accuracy": {
            int(c): float((pred[y == c] == c).mean()) for c in range(num_classes) if (y == c).any()
        },
    }
    if other is not None:
        alt = "online" if eval_model == "ema" else "ema"
        out[f"{prefix}_accuracy_{eval_model}"] = out[f"{prefix}_accuracy"]
        out[f"{prefix}_accuracy_{alt}"] = float(accuracy_score(y, other))
    return out
