"""Read and validate untrusted human label files.

Two formats are accepted (chosen by extension, ``.json`` / ``.csv``, else by the first character):

* CSV with a header that has the columns ``sample_id`` and ``label`` (any order, any case; other
  columns such as ``rank`` are ignored; ``,``, ``;`` or tab separated; UTF-8 with or without BOM;
  blank lines are skipped).
* A Label Studio JSON export: a list of tasks with ``data.sample_id`` and
  ``annotations[*].result[*].value.choices[0]``. The latest non-cancelled annotation of a task counts
  (by ``updated_at``/``created_at``, then list order); a task without one is unanswered. The flat
  "JSON-MIN" export (``{"sample_id": ..., "label": ...}`` per task) is accepted too.

Labels are class *names*, matched exactly (case-sensitive) after stripping whitespace. Integer class
indices are accepted only when that cannot be ambiguous: every label in the file is an integer and
no class name looks like an integer. Anything else is an unknown class name.

Everything is checked before anything is returned, and all problems are reported at once in one
:class:`~hssal_ray.errors.LabelFileError` that names the offending lines/tasks and ids. Files are
only ever parsed as text (``csv``/``json``): never unpickled or evaluated.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hssal_ray import _io
from hssal_ray.errors import LabelFileError
from hssal_ray.oracle._label_studio import LabelRow, rows_from_label_studio
from hssal_ray.oracle.base import OracleAnswer, PartialPolicy

__all__ = ["parse_label_file", "write_labels_csv", "MAX_LISTED"]

logger = logging.getLogger(__name__)

MAX_LISTED = 10
"""At most this many offending rows are named per kind of problem; the rest are counted."""

_KINDS = {
    "columns": "wrong columns",
    "shape": "entries that are not in the expected shape",
    "empty_id": "rows without a sample_id",
    "unknown_id": "sample ids that are not in this round's query",
    "duplicate": "duplicate sample ids",
    "empty_label": "empty labels",
    "multi_label": "more than one class chosen",
    "unknown_class": "unknown class names",
    "bad_index": "class indices out of range",
    "missing": "queried ids without a label",
    "nothing": "no labels at all",
}


class _Problems:
    """Collects problems by kind and renders one error message."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}

    def add(self, kind: str, item: str) -> None:
        self.items.setdefault(kind, []).append(item)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> LabelFileError:
        total = sum(len(v) for v in self.items.values())
        plural = "s" * (total != 1)
        lines = [f"labels file {self.source!r} rejected ({total} problem{plural}; nothing was changed):"]
        for kind, heading in _KINDS.items():
            items = self.items.get(kind)
            if not items:
                continue
            shown = "; ".join(items[:MAX_LISTED])
            more = f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
            note = f" [{self.notes[kind]}]" if kind in self.notes else ""
            lines.append(f"  - {heading} ({len(items)}): {shown}{more}{note}")
        return LabelFileError("\n".join(lines))


def _fail(source: str, message: str) -> LabelFileError:
    return LabelFileError(f"labels file {source!r} rejected (nothing was changed): {message}")


def parse_label_file(
    path: str,
    *,
    query_ids: Sequence[str],
    class_names: Sequence[str],
    partial: PartialPolicy = "wait",
) -> OracleAnswer:
    """Read, validate and convert a human label file.

    Args:
        path: CSV or Label Studio JSON file, local path or URI.
        query_ids: The ids of the round's query; every row must be one of them.
        class_names: Class names, index = class id (``classes.json``).
        partial: ``wait``: every queried id needs a label. ``continue``: unanswered ids (absent rows,
            empty labels, tasks without annotation) are returned in ``missing``. An answer without a
            single label is rejected in both modes.

    Returns:
        An :class:`OracleAnswer` with ``source="human"``.

    Raises:
        LabelFileError: The file is missing, unreadable, not UTF-8 text, of the wrong shape, or has
            invalid rows; the message lists every problem with its line (CSV) or task (JSON) and id.
        ValueError: ``partial`` is not ``wait`` or ``continue``.
    """
    if partial not in ("wait", "continue"):
        raise ValueError(f"partial must be 'wait' or 'continue', got {partial!r}")
    text = _read_text(str(path))
    fmt = _detect_format(str(path), text)
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        rows, shape_problems = rows_from_label_studio(doc)
        if rows is None:
            raise _fail(path, shape_problems[0])
    else:
        rows, shape_problems = _rows_from_csv(str(path), text), []
    problems = _Problems(str(path))
    for p in shape_problems:
        problems.add("shape", p)
    labels, missing = _validate(rows, query_ids, class_names, partial, problems)
    if problems:
        raise problems.error()
    logger.info("read %d labels from %s (%d unanswered)", len(labels), path, len(missing))
    return OracleAnswer(labels=labels, missing=missing, source="human")


def write_labels_csv(
    path: str, labels: Mapping[str, int], class_names: Sequence[str], order: Sequence[str] | None = None
) -> None:
    """Atomically write the canonical answer file ``sample_id,label`` (label = class name).

    Args:
        path: Target file (usually ``round_XXX/labels.csv``), local path or URI.
        labels: ``sample_id -> class index``.
        class_names: Class names, index = class id.
        order: Row order (ids not in ``labels`` are skipped); default: the order of ``labels``.

    Raises:
        ValueError: A class index is out of range.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", "label"])
    for sid in order if order is not None else list(labels):
        if sid not in labels:
            continue
        idx = int(labels[sid])
        if not 0 <= idx < len(class_names):
            raise ValueError(f"class index {idx} of {sid!r} is out of range 0..{len(class_names) - 1}")
        writer.writerow([sid, class_names[idx]])
    _io.atomic_write_text(path, buf.getvalue())


def _read_text(path: str) -> str:
    try:
        if not _io.exists(path):
            raise _fail(path, "file not found")
        data = _io.read_bytes(path)
    except LabelFileError:
        raise
    except (OSError, ValueError) as e:  # a directory, no permission, bad URI, ...
        raise _fail(path, f"cannot read it ({type(e).__name__}: {e})") from None
    if not data.strip():
        raise _fail(
            path, "file is empty; expected a CSV with header 'sample_id,label' or a Label Studio JSON export"
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _fail(path, "file is UTF-16 text; save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)")
    if b"\x00" in data:
        offset = data.index(b"\x00")
        raise _fail(path, f"binary data (NUL byte at offset {offset}); expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _fail(
            path, f"not UTF-8 text (invalid byte on line {line}, offset {e.start}); save it as UTF-8"
        ) from None


def _detect_format(path: str, text: str) -> str:
    lower = path.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def _rows_from_csv(source: str, text: str) -> list[LabelRow]:
    lines = text.splitlines()
    header_line = next((ln for ln in lines if ln.strip()), "")
    delimiter = max((",", ";", "\t"), key=lambda d: (header_line.count(d), d == ","))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[LabelRow] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # blank line or a row of empty cells (spreadsheet leftovers)
            if header is None:
                header = [c.strip().lower() for c in record]
                id_col, label_col = _check_header(source, header)
                continue
            where = f"line {reader.line_num}"
            sid = record[id_col].strip() if id_col < len(record) else ""
            label = record[label_col].strip() if label_col < len(record) else ""
            rows.append(LabelRow(where=where, sample_id=sid, label=label))
    except csv.Error as e:
        raise _fail(source, f"malformed CSV at line {reader.line_num}: {e}") from None
    if header is None:
        raise _fail(source, "file is empty; expected a CSV with header 'sample_id,label'")
    return rows


def _check_header(source: str, header: list[str]) -> tuple[int, int]:
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    absent = [c for c in ("sample_id", "label") if c not in header]
    if absent or dupes:
        found = ", ".join(repr(c) for c in header)
        what = f"missing column(s) {', '.join(repr(c) for c in absent)}" if absent else ""
        if dupes:
            what += ("; " if what else "") + f"duplicate column(s) {', '.join(map(repr, dupes))}"
        raise _fail(
            source, f"wrong columns on line 1: {what}; expected header 'sample_id,label', found [{found}]"
        )
    return header.index("sample_id"), header.index("label")


@dataclass
class _Seen:
    where: str
    label: str


def _validate(
    rows: list[LabelRow],
    query_ids: Sequence[str],
    class_names: Sequence[str],
    partial: PartialPolicy,
    problems: _Problems,
) -> tuple[dict[str, int], list[str]]:
    query = set(query_ids)
    index_mode = _index_mode(rows, class_names)
    by_name = {name: i for i, name in enumerate(class_names)}
    seen: dict[str, _Seen] = {}
    labels: dict[str, int] = {}
    for row in rows:
        sid, label, where = row.sample_id, row.label, row.where
        tag = f"{where} (sample_id {sid!r})"
        if not sid:
            problems.add("empty_id", f"{where}" + (f" (label {label!r})" if label else ""))
            continue
        if sid not in query:
            problems.add("unknown_id", tag)
            continue
        if sid in seen:
            first = seen[sid]
            same = (
                f"same label {label!r}"
                if first.label == (label or "")
                else f"conflicting: {first.label!r} vs {label!r}"
            )
            problems.add("duplicate", f"{tag}, first on {first.where} ({same})")
            continue
        seen[sid] = _Seen(where, label or "")
        if row.choices > 1:
            problems.add("multi_label", f"{tag}: {row.choices} choices")
            continue
        if not label:
            if partial == "wait":
                problems.add("empty_label", tag)
                problems.notes["empty_label"] = (
                    "every queried sample needs a class, or set partial='continue'"
                )
            continue
        idx = _class_index(label, by_name, class_names, index_mode, tag, problems)
        if idx is not None:
            labels[sid] = idx
    if "unknown_class" in problems.items:
        problems.notes["unknown_class"] = "allowed (case-sensitive): " + ", ".join(map(repr, class_names))
    missing = [sid for sid in dict.fromkeys(query_ids) if sid not in labels]
    if not labels and not problems:
        problems.add("nothing", f"none of the {len(query)} queried ids is labeled")
    elif partial == "wait":
        absent = [sid for sid in missing if sid not in seen]
        for sid in absent:
            problems.add("missing", repr(sid))
        if absent:
            problems.notes["missing"] = "add a row for each, or set partial='continue'"
    return labels, missing


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
