"""The checks of :mod:`hssal_ray.oracle.labels`: one pass over the rows, every problem collected.

:func:`_validate` applies the rules of the ``labels`` module docstring (agreeing answers count once,
conflicts are rejected, earlier rounds' tasks must match the stored labels, class names exactly or
unambiguous indices) and :class:`_Problems` renders all problems in one error message.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hssal_ray.errors import LabelFileError
from hssal_ray.oracle._label_studio import LabelRow
from hssal_ray.oracle.base import OracleAnswer, PartialPolicy

MAX_LISTED = 10
"""At most this many offending rows are named per kind of problem; the rest are counted."""


_KINDS = {
    "columns": "wrong columns",
    "shape": "entries that are not in the expected shape",
    "empty_id": "rows without a sample_id",
    "unknown_ref": "task refs that belong to no batch of this run",
    "unknown_id": "sample ids that are not in this round's query (nor in an earlier round's)",
    "changed": "samples of earlier rounds whose label differs from the one stored",
    "conflict": "conflicting answers for one sample",
    "empty_label": "empty labels",
    "multi_label": "more than one class chosen",
    "unknown_class": "unknown class names",
    "bad_index": "class indices out of range",
    "skipped": "tasks skipped in Label Studio (only cancelled annotations)",
    "missing": "queried ids without a label",
    "nothing": "no labels at all",
}


class _Problems:
    """Collects problems by kind and renders one error message."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.fmt = ""
        self.items: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}

    def add(self, kind: str, item: str) -> None:
        self.items.setdefault(kind, []).append(item)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> LabelFileError:
        total = sum(len(v) for v in self.items.values())
        plural = "s" * (total != 1)
        fmt = f" ({self.fmt})" if self.fmt else ""
        lines = [f"{_what(self.source)}{fmt} rejected ({total} problem{plural}; nothing was changed):"]
        for kind, heading in _KINDS.items():
            items = self.items.get(kind)
            if not items:
                continue
            shown = "; ".join(items[:MAX_LISTED])
            more = f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            note = f" [{self.notes[kind]}]" if kind in self.notes else ""
            lines.append(f"  - {heading} ({len(items)}): {shown}{more}{note}")
        return LabelFileError("\n".join(lines))


def _what(source: str) -> str:
    return source if source.startswith("Label Studio ") else f"labels file {source!r}"


def _fail(source: str, message: str, fmt: str = "") -> LabelFileError:
    what = f"{_what(source)} ({fmt})" if fmt else _what(source)
    return LabelFileError(f"{what} rejected (nothing was changed): {message}")


@dataclass
class _Answers:
    """Every row found for one queried sample."""

    answered: list[LabelRow] = field(default_factory=list)
    empty: list[LabelRow] = field(default_factory=list)
    skipped: list[LabelRow] = field(default_factory=list)
    unanswered: list[LabelRow] = field(default_factory=list)
    conflicts: list[LabelRow] = field(default_factory=list)


def _validate(
    rows: list[LabelRow],
    query_ids: Sequence[str],
    class_names: Sequence[str],
    partial: PartialPolicy,
    problems: _Problems,
    refs: Mapping[str, str],
    earlier: Mapping[str, int | None],
    hint: str,
) -> OracleAnswer:
    query = list(dict.fromkeys(query_ids))
    in_query = set(query)
    index_mode = _index_mode(rows, class_names)
    by_name = {name: i for i, name in enumerate(class_names)}
    is_json = problems.fmt.startswith("Label Studio")
    by_id: dict[str, _Answers] = {}
    already: dict[str, None] = {}
    for row in rows:
        sid, where = row.sample_id, row.where
        if not sid and row.ref:
            sid = refs.get(row.ref, "")
            if not sid:
                problems.add("unknown_ref", f"{where} (ref {row.ref!r})")
                continue
        tag = f"{where} (sample_id {sid!r})"
        if not sid:
            problems.add("empty_id", f"{where}" + (f" (label {row.label!r})" if row.label else ""))
            continue
        if sid not in in_query:
            if sid not in earlier:
                problems.add("unknown_id", tag)
            elif row.status == "conflict":
                problems.add("conflict", f"{tag}: {row.detail}")
            elif row.status == "answered" and row.label and earlier[sid] is not None:
                stored = int(earlier[sid])  # type: ignore[arg-type]
                idx = _class_index(row.label, by_name, class_names, index_mode, tag, problems)
                if idx is not None and idx != stored:
                    problems.add("changed", f"{tag}: {row.label!r}, stored {class_names[stored]!r}")
                elif idx is not None:
                    already[sid] = None
            continue  # an earlier round's task: unanswered then, or unanswered now
        slot = by_id.setdefault(sid, _Answers())
        if row.status == "conflict":
            slot.conflicts.append(row)
        elif row.status == "skipped":
            slot.skipped.append(row)
        elif row.status == "unanswered":
            slot.unanswered.append(row)
        elif not row.label:
            slot.empty.append(row)
        else:
            slot.answered.append(row)
    labels: dict[str, int] = {}
    for sid in query:
        slot = by_id.get(sid)
        if slot is None:
            continue
        tag = f"sample_id {sid!r}"
        if slot.conflicts:
            for row in slot.conflicts:
                problems.add("conflict", f"{row.where} ({tag}): {row.detail}")
            continue
        distinct = {(r.label, r.choices) for r in slot.answered}
        if len(distinct) > 1:
            listed = ", ".join(f"{r.label!r} ({r.where})" for r in slot.answered)
            problems.add("conflict", f"{tag}: {listed}")
            continue
        if slot.answered:
            row = slot.answered[0]
            rtag = f"{row.where} ({tag})"
            if row.choices > 1:
                problems.add("multi_label", f"{rtag}: {row.choices} choices")
                continue
            idx = _class_index(row.label, by_name, class_names, index_mode, rtag, problems)
            if idx is not None:
                labels[sid] = idx
            continue
        if partial == "continue":
            continue
        if slot.skipped:
            problems.add("skipped", f"{slot.skipped[0].where} ({tag})")
            problems.notes["skipped"] = (
                "open each in Label Studio, label it and submit, then export again; " + hint
            )
        elif slot.empty:
            problems.add("empty_label", f"{slot.empty[0].where} ({tag})")
            problems.notes["empty_label"] = "every queried sample needs a class; " + hint
        else:
            problems.add("missing", f"{slot.unanswered[0].where} ({tag}): not labeled")
    if "unknown_class" in problems.items:
        problems.notes["unknown_class"] = "allowed (case-sensitive): " + ", ".join(map(repr, class_names))
    if "unknown_ref" in problems.items:
        problems.notes["unknown_ref"] = "tasks of another run, or a batch whose query.csv is gone"
    if "unknown_id" in problems.items:
        problems.notes["unknown_id"] = "tasks of another run or dataset; export only this run's tasks"
    if "conflict" in problems.items:
        fix = "delete or fix all but one annotation in Label Studio" if is_json else "keep one row per sample"
        problems.notes["conflict"] = (
            f"in every format agreeing answers count once and conflicting ones are rejected; {fix}"
        )
    if "changed" in problems.items:
        problems.notes["changed"] = (
            "stored labels are never changed; restore the earlier answer in Label Studio"
        )
    missing = [sid for sid in query if sid not in labels]
    if not labels and not problems:
        problems.add("nothing", f"none of the {len(query)} queried ids is labeled")
    elif partial == "wait":
        absent = [sid for sid in missing if sid not in by_id]
        for sid in absent:
            problems.add("missing", repr(sid) + (" (no task in the export)" if is_json else " (no row)"))
        if "missing" in problems.items:
            todo = (
                "label each in Label Studio and export all of the round's tasks again"
                if is_json
                else "add a row with a class name for each"
            )
            problems.notes["missing"] = f"{todo}; {hint}"
    return OracleAnswer(labels=labels, missing=missing, source="human", already_labeled=list(already))


def _index_mode(rows: list[LabelRow], class_names: Sequence[str]) -> bool:
    """Whether labels are class indices: all are integers and no class name looks like one."""
    values = [r.label for r in rows if r.label]
    return bool(values) and all(_is_int(v) for v in values) and not any(_is_int(c) for c in class_names)


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _class_index(
    label: str,
    by_name: Mapping[str, int],
    class_names: Sequence[str],
    index_mode: bool,
    tag: str,
    problems: _Problems,
) -> int | None:
    if label in by_name:
        return by_name[label]
    if index_mode:
        idx = int(label)
        if 0 <= idx < len(class_names):
            return idx
        problems.add("bad_index", f"{tag}: {idx} (valid: 0..{len(class_names) - 1})")
        return None
    problems.add("unknown_class", f"{tag}: {label!r}{_suggest(label, class_names)}")
    return None


def _suggest(label: str, class_names: Sequence[str]) -> str:
    folded = [c for c in class_names if c.casefold() == label.casefold()]
    close = folded or difflib.get_close_matches(label, list(class_names), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in class_names}
        close = [lowered[m] for m in difflib.get_close_matches(label.lower(), list(lowered), n=1, cutoff=0.6)]
    if close:
        return f", did you mean {close[0]!r}?"
    if _is_int(label):
        return " (integer class indices are accepted only if every label in the file is one)"
    return ""
