"""Read and validate untrusted human label files and Label Studio answers.

Formats (chosen by extension, ``.json`` / ``.csv`` / ``.tsv``, else by the first character):

* CSV/TSV with a header that has the columns ``sample_id`` (or ``ref``, see below) and ``label``
  (any order, any case; other columns such as ``rank`` are ignored; ``,``, ``;`` or tab separated;
  UTF-8 with or without BOM; blank lines are skipped; fields of any size, as Label Studio's CSV and
  TSV exports carry the embedded images).
* A Label Studio ``JSON`` export: a list of tasks with ``data.sample_id`` (or ``data.ref``) and
  ``annotations[*].result[*].value.choices``; cancelled annotations are skipped tasks.
* A Label Studio ``JSON_MIN`` export (``{"sample_id": ..., "label": ...}`` per annotation).

One rule for every format: several answers for one sample (several annotations of a task, one
row per annotation in JSON_MIN/CSV/TSV exports, a repeated row, two tasks of one sample) count
once when they agree and are **rejected when they conflict**, naming each answer. Skipped
(cancelled) and unanswered tasks, empty labels and absent rows are unanswered: ``partial='wait'``
rejects them, ``continue`` returns them in ``missing``.

Tasks of earlier rounds (one Label Studio project reused across rounds) are accepted when their
label equals the one already stored in ``labeled.parquet`` (reported in
:attr:`OracleAnswer.already_labeled`) and rejected when it differs; tasks of earlier rounds that
were left unanswered then are ignored; any other id is foreign and rejected.

A run that hides sample ids from annotators identifies tasks by an opaque ``ref``
(``<run>:<batch>:<rank>``), resolved through the ``refs`` mapping (built from the run's query files).

Labels are class *names*, matched exactly (case-sensitive) after stripping whitespace. Integer class
indices are accepted only when that cannot be ambiguous: every label in the file is an integer and
no class name looks like an integer. Anything else is an unknown class name.

Everything is checked before anything is returned, and all problems are reported at once in one
:class:`~hssal_ray.errors.LabelFileError` that names the format, the offending lines/tasks and ids,
and the exact command-line override where one helps. Files are only ever parsed as text
(``csv``/``json``): never unpickled or evaluated.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import io
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from hssal_ray import _io
from hssal_ray.errors import LabelFileError
from hssal_ray.oracle._label_studio import LabelRow, rows_from_label_studio
from hssal_ray.oracle.base import OracleAnswer, PartialPolicy

__all__ = ["parse_label_file", "parse_label_rows", "write_labels_csv", "MAX_LISTED", "PARTIAL_OVERRIDE"]

logger = logging.getLogger(__name__)

MAX_LISTED = 10
"""At most this many offending rows are named per kind of problem; the rest are counted."""

PARTIAL_OVERRIDE = "oracle.partial=continue"
"""The command-line override that accepts partial answers."""

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


def parse_label_file(
    path: str,
    *,
    query_ids: Sequence[str],
    class_names: Sequence[str],
    partial: PartialPolicy = "wait",
    refs: Mapping[str, str] | None = None,
    earlier: Mapping[str, int | None] | None = None,
    partial_hint: str | None = None,
) -> OracleAnswer:
    """Read, validate and convert a human label file.

    Args:
        path: CSV/TSV or Label Studio JSON / JSON_MIN file, local path or URI.
        query_ids: The ids of the round's query; every answered id must be one of them (or of
            ``earlier``).
        class_names: Class names, index = class id (``classes.json``).
        partial: ``wait``: every queried id needs a label. ``continue``: unanswered ids (absent rows,
            empty labels, tasks without annotation or skipped) are returned in ``missing``. An answer
            without a single label is rejected in both modes.
        refs: ``ref -> sample_id`` of every task this run handed out with a hidden sample id.
        earlier: ``sample_id -> stored class index`` (``None``: left unanswered then) of the ids of
            the run's earlier batches, so that an export of a project reused across rounds passes.
        partial_hint: How to accept partial answers, for the messages (default: the override
            ``oracle.partial=continue``).

    Returns:
        An :class:`OracleAnswer` with ``source="human"``.

    Raises:
        LabelFileError: The file is missing, unreadable, not UTF-8 text, of the wrong shape, or has
            invalid rows; the message names the format and lists every problem with its line (CSV)
            or task (JSON) and id.
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
            raise _fail(
                path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", "JSON"
            ) from None
        rows, shape_problems, fmt = rows_from_label_studio(doc)
        if rows is None:
            raise _fail(path, shape_problems[0], "JSON")
    else:
        rows, fmt = _rows_from_csv(str(path), text)
        shape_problems = []
    return parse_label_rows(
        rows,
        source=str(path),
        fmt=fmt,
        shape_problems=shape_problems,
        query_ids=query_ids,
        class_names=class_names,
        partial=partial,
        refs=refs,
        earlier=earlier,
        partial_hint=partial_hint,
    )


def parse_label_rows(
    rows: list[LabelRow],
    *,
    source: str,
    fmt: str,
    query_ids: Sequence[str],
    class_names: Sequence[str],
    partial: PartialPolicy = "wait",
    shape_problems: Sequence[str] = (),
    refs: Mapping[str, str] | None = None,
    earlier: Mapping[str, int | None] | None = None,
    partial_hint: str | None = None,
) -> OracleAnswer:
    """Validate rows already extracted from a file or from the Label Studio API.

    Args:
        rows: The rows (see :func:`~hssal_ray.oracle._label_studio.rows_from_label_studio`).
        source: What the rows came from, for messages: a path, or a text starting with
            ``Label Studio `` (e.g. ``Label Studio project 3, round_002``).
        fmt: The format's name for messages (``CSV``, ``Label Studio JSON``, ...).
        query_ids, class_names, partial, refs, earlier, partial_hint: As for :func:`parse_label_file`.
        shape_problems: Malformed entries found while extracting the rows.

    Returns:
        The answer (``source="human"``).

    Raises:
        LabelFileError: Any problem; nothing is returned then.
    """
    if partial not in ("wait", "continue"):
        raise ValueError(f"partial must be 'wait' or 'continue', got {partial!r}")
    problems = _Problems(source)
    problems.fmt = fmt
    for p in shape_problems:
        problems.add("shape", p)
    hint = partial_hint or f"or go on with the labels given: add {PARTIAL_OVERRIDE} to the --resume command"
    answer = _validate(rows, query_ids, class_names, partial, problems, refs or {}, earlier or {}, hint)
    if problems:
        raise problems.error()
    logger.info(
        "read %d labels from %s (%s; %d unanswered%s)",
        answer.num_answered,
        source,
        fmt,
        len(answer.missing),
        f"; {len(answer.already_labeled)} tasks of earlier rounds match the stored labels"
        if answer.already_labeled
        else "",
    )
    return answer


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


@contextlib.contextmanager
def _no_field_limit() -> Iterator[None]:
    """Lift ``csv``'s 128 KiB field limit while reading (Label Studio's CSV/TSV exports embed images)."""
    old = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _rows_from_csv(source: str, text: str) -> tuple[list[LabelRow], str]:
    lines = text.splitlines()
    header_line = next((ln for ln in lines if ln.strip()), "")
    delimiter = max((",", ";", "\t"), key=lambda d: (header_line.count(d), d == ","))
    fmt = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[LabelRow] = []
    try:
        with _no_field_limit():
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue  # blank line or a row of empty cells (spreadsheet leftovers)
                if header is None:
                    header = [c.strip().lower() for c in record]
                    id_col, ref_col, label_col, skip_col = _check_header(source, header, fmt)
                    continue
                where = f"line {reader.line_num}"
                sid = _cell(record, id_col)
                ref = _cell(record, ref_col)
                label = _cell(record, label_col)
                if not sid and not ref:
                    rows.append(LabelRow(where=where, sample_id="", label=label))
                elif skip_col is not None and _cell(record, skip_col).lower() in ("true", "1"):
                    rows.append(LabelRow(where, sid, "", status="skipped", ref=ref))
                else:
                    label, choices = _csv_label(label)
                    rows.append(LabelRow(where=where, sample_id=sid, label=label, choices=choices, ref=ref))
    except csv.Error as e:
        raise _fail(source, f"malformed {fmt} at line {reader.line_num}: {e}", fmt) from None
    if header is None:
        raise _fail(source, "file is empty; expected a CSV with header 'sample_id,label'", fmt)
    return rows, fmt


def _cell(record: list[str], col: int | None) -> str:
    return record[col].strip() if col is not None and col < len(record) else ""


def _csv_label(label: str) -> tuple[str, int]:
    """A Label Studio CSV export writes several choices as ``{"choices": [...]}``: unpack that."""
    if not label.startswith("{"):
        return label, 1
    try:
        value = json.loads(label)
    except json.JSONDecodeError:
        return label, 1
    choices = value.get("choices") if isinstance(value, dict) else None
    if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
        return choices[0].strip(), len(choices)
    return label, 1


def _check_header(source: str, header: list[str], fmt: str) -> tuple[int | None, int | None, int, int | None]:
    dupes = sorted({c for c in header if c and header.count(c) > 1 and c in ("sample_id", "ref", "label")})
    absent = [c for c in ("label",) if c not in header]
    if "sample_id" not in header and "ref" not in header:
        absent.insert(0, "sample_id")
    if absent or dupes:
        found = ", ".join(repr(c) for c in header[:12]) + (", ..." if len(header) > 12 else "")
        what = f"missing column(s) {', '.join(repr(c) for c in absent)}" if absent else ""
        if dupes:
            what += ("; " if what else "") + f"duplicate column(s) {', '.join(map(repr, dupes))}"
        raise _fail(
            source,
            f"wrong columns on line 1: {what}; expected header 'sample_id,label' "
            f"(or 'ref,label' for tasks with hidden sample ids), found [{found}]",
            fmt,
        )
    return (
        header.index("sample_id") if "sample_id" in header else None,
        header.index("ref") if "ref" in header else None,
        header.index("label"),
        header.index("was_cancelled") if "was_cancelled" in header else None,
    )


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
