"""The simulated oracle: answers queries from the dataset's own labels (benchmarks, demos, tests)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from hssal_ray import _io
from hssal_ray.errors import DataError
from hssal_ray.oracle.base import LABELS_FILE, Oracle, OracleAnswer
from hssal_ray.oracle.labels import MAX_LISTED, write_labels_csv

__all__ = ["SimulatedOracle"]

logger = logging.getLogger(__name__)

GroundTruth = Mapping[str, int] | Callable[[str], int | None]


class SimulatedOracle(Oracle):
    """Answers every query at once with the ground-truth label; never pauses the loop.

    The answer is also written to ``round_dir/labels.csv`` (class names) for the record, so a
    simulated run directory looks like one answered by people.

    Args:
        ground_truth: ``sample_id -> class index``, or a callable returning the class index of an id
            (``None`` or ``KeyError`` for an id it does not know).
        class_names: Class names, index = class id (``classes.json``).

    Example:
        >>> oracle = SimulatedOracle({"a": 0, "b": 1}, ["forest", "river"])
        >>> oracle.collect("runs/demo/round_000", ["b"]).labels  # doctest: +SKIP
        {'b': 1}
    """

    source: ClassVar[str] = "oracle"
    may_pause: ClassVar[bool] = False

    def __init__(self, ground_truth: GroundTruth, class_names: Sequence[str]) -> None:
        """Store the ground truth and the class names (see the class docstring)."""
        if not class_names:
            raise ValueError("class_names is empty")
        self.ground_truth = ground_truth
        self.class_names = list(class_names)

    def collect(self, round_dir: str, ids: Sequence[str]) -> OracleAnswer:
        """Label ``ids`` from the ground truth and record them in ``round_dir/labels.csv``.

        Args:
            round_dir: The round's directory, local path or URI.
            ids: The queried sample ids.

        Returns:
            Every id labeled; ``missing`` is empty.

        Raises:
            DataError: Some ids have no ground truth, or a ground-truth value is not a valid class
                index; the message names them. Nothing is written then.
        """
        labels: dict[str, int] = {}
        unknown: list[str] = []
        invalid: list[str] = []
        n = len(self.class_names)
        for sid in dict.fromkeys(ids):
            value = self._lookup(sid)
            if value is None:
                unknown.append(sid)
            elif isinstance(value, bool) or not _is_index(value) or not 0 <= int(value) < n:
                invalid.append(f"{sid!r} -> {value!r}")
            else:
                labels[sid] = int(value)
        if unknown or invalid:
            raise DataError(
                self._message(round_dir, len(labels) + len(unknown) + len(invalid), unknown, invalid)
            )
        write_labels_csv(_io.join(round_dir, LABELS_FILE), labels, self.class_names, order=list(labels))
        logger.info("simulated oracle labeled %d samples in %s", len(labels), round_dir)
        return OracleAnswer(labels=labels, missing=[], source=self.source)

    def _lookup(self, sid: str) -> Any:
        if callable(self.ground_truth):
            try:
                return self.ground_truth(sid)
            except KeyError:
                return None
        return self.ground_truth.get(sid)

    def _message(self, round_dir: str, total: int, unknown: list[str], invalid: list[str]) -> str:
        parts = [f"simulated oracle cannot answer the query of {round_dir!r}:"]
        if unknown:
            shown = ", ".join(repr(s) for s in unknown[:MAX_LISTED])
            more = f", ... and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
            parts.append(
                f"  - {len(unknown)} of {total} queried ids have no ground-truth label: {shown}{more}"
            )
        if invalid:
            shown = ", ".join(invalid[:MAX_LISTED])
            more = f", ... and {len(invalid) - MAX_LISTED} more" if len(invalid) > MAX_LISTED else ""
            parts.append(
                f"  - {len(invalid)} ground-truth labels are not class indices in "
                f"0..{len(self.class_names) - 1}: {shown}{more}"
            )
        return "\n".join(parts)

    def _repr_params(self) -> dict[str, Any]:
        gt = self.ground_truth
        desc = f"<{len(gt)} labels>" if isinstance(gt, Mapping) else getattr(gt, "__name__", "<callable>")
        return {"ground_truth": desc, "num_classes": len(self.class_names)}


def _is_index(value: Any) -> bool:
    try:
        return int(value) == value
    except (TypeError, ValueError):
        return False
