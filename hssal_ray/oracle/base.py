"""The oracle interface: who answers a round's query batch.

The loop talks to an oracle in two steps (docs/ARCHITECTURE.md), so that a human hand-off can pause
the run between them::

    oracle.request(round_dir, ids, context)   # hand the batch over (write files, ...)
    answer = oracle.collect(round_dir, ids)   # the answer, or None if it has not come back yet

When ``collect`` returns ``None`` the loop records status ``awaiting_labels`` in ``state.json`` and
exits 0; ``python -m hssal_ray.loop --resume RUN --labels FILE`` later imports the answer and calls
``collect`` again. Both calls must be idempotent: a resumed run may repeat them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

__all__ = ["Oracle", "OracleAnswer", "PartialPolicy", "LABELS_FILE"]

PartialPolicy = Literal["wait", "continue"]
"""What to do when an answer covers only part of the query: ``wait`` rejects it, ``continue`` keeps it."""

LABELS_FILE = "labels.csv"
"""Name of the canonical answer file in a round directory (``sample_id,label``, label = class name)."""


@dataclass(frozen=True)
class OracleAnswer:
    """The labels an oracle returned for one query batch.

    Args:
        labels: ``sample_id -> class index`` (index into ``classes.json``) for every answered id.
        missing: Queried ids that did not get a label (only non-empty with a ``continue`` policy),
            in query order.
        source: Provenance recorded in ``labeled.parquet``: ``oracle`` (simulated) or ``human``.
        already_labeled: Ids of earlier rounds that the answer repeated with the label already
            stored (a Label Studio project reused across rounds); informational, not compared.
    """

    labels: dict[str, int]
    missing: list[str] = field(default_factory=list)
    source: str = "oracle"
    already_labeled: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        """Reject ids that are both answered and missing (a programming error, not user input)."""
        overlap = set(self.labels).intersection(self.missing)
        if overlap:
            raise ValueError(f"ids both answered and missing: {sorted(overlap)[:5]}")

    @property
    def num_answered(self) -> int:
        """Number of ids that got a label."""
        return len(self.labels)


class Oracle(ABC):
    """Answers query batches with class indices.

    Subclasses implement :meth:`collect`; :meth:`request` is a no-op unless the oracle has to hand the
    batch to someone. The class attributes tell the loop what it needs to know without ``isinstance``.

    Attributes:
        source: Value of the ``source`` column of ``labeled.parquet`` for labels from this oracle.
        may_pause: Whether :meth:`collect` can return ``None`` (the run then awaits labels).
        pulls_labels: Whether :meth:`collect` fetches the answer itself (Label Studio), so that a
            run awaiting labels resumes without ``--labels``.
        accepts_label_files: Whether :meth:`import_labels` takes a label file (``--labels``).
    """

    source: ClassVar[str] = "oracle"
    may_pause: ClassVar[bool] = False
    pulls_labels: ClassVar[bool] = False
    accepts_label_files: ClassVar[bool] = False

    def request(self, round_dir: str, ids: Sequence[str], context: Mapping[str, Any] | None = None) -> None:
        """Hand a query batch to the oracle.

        Args:
            round_dir: The round's directory (``runs/<name>/round_003``), local path or URI. The loop
                has already written ``query.csv`` there.
            ids: Queried sample ids, in rank order (rank 1 first).
            context: Optional extra information. Keys the built-in oracles read: ``run_dir`` (str; by
                default the parent of ``round_dir``), ``round`` (int), ``ranks`` (``sample_id -> rank``;
                by default read from ``query.csv``, else the order of ``ids``).
        """
        return None

    @abstractmethod
    def collect(self, round_dir: str, ids: Sequence[str]) -> OracleAnswer | None:
        """Return the answer to the batch requested for ``round_dir``.

        Args:
            round_dir: The round's directory, as given to :meth:`request`.
            ids: The queried sample ids, as given to :meth:`request`.

        Returns:
            The answer, or ``None`` if it has not come back yet.

        Raises:
            LabelFileError: A returned label file is invalid (nothing was changed).
            DataError: A simulated oracle has no ground truth for some ids.
        """

    def import_labels(self, round_dir: str, ids: Sequence[str], labels_path: str) -> OracleAnswer:
        """Validate a label file answering the batch of ``round_dir`` and store it as the answer.

        Only oracles with :attr:`accepts_label_files` take label files; this default refuses.

        Raises:
            StateError: This oracle takes no label files.
        """
        from hssal_ray.errors import StateError

        raise StateError("--labels only applies to runs with oracle.kind=human or label_studio")

    def instructions(self, round_dir: str) -> str:
        """What a person has to do to answer the batch of ``round_dir`` (empty: nothing)."""
        return ""

    def __repr__(self) -> str:
        """Class name and public parameters, for logs."""
        params = ", ".join(f"{k}={v!r}" for k, v in self._repr_params().items())
        return f"{type(self).__name__}({params})"

    def _repr_params(self) -> dict[str, Any]:
        return {}
