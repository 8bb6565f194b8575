"""Read and validate untrusted human label files and Label Studio answers.

A label file must be a regular file of at most :data:`MAX_LABEL_FILE_BYTES` (64 MiB), checked before
it is read (:func:`check_label_file`). Formats (chosen by extension, ``.json`` / ``.csv`` / ``.tsv``,
else by the first character):

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

import io
import json
import logging
from collections.abc import Mapping, Sequence

from hssal_ray import _csv, _io
from hssal_ray.oracle._label_check import MAX_LISTED, _fail, _Problems, _validate
from hssal_ray.oracle._label_files import (
    MAX_LABEL_FILE_BYTES,
    _detect_format,
    _read_text,
    _rows_from_csv,
    _unescape_rows,
    check_label_file,
)
from hssal_ray.oracle._label_studio import LabelRow, rows_from_label_studio
from hssal_ray.oracle.base import OracleAnswer, PartialPolicy

__all__ = [
    "parse_label_file",
    "parse_label_rows",
    "check_label_file",
    "write_labels_csv",
    "MAX_LISTED",
    "MAX_LABEL_FILE_BYTES",
    "PARTIAL_OVERRIDE",
]

logger = logging.getLogger(__name__)

PARTIAL_OVERRIDE = "oracle.partial=continue"
"""The command-line override that accepts partial answers."""


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
        LabelFileError: The file is missing, not a regular file, over the size limit, unreadable, not
            UTF-8 text, nested too deeply, of the wrong shape, or has invalid rows; the message names
            the format and lists every problem with its line (CSV) or task (JSON) and id.
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
        except RecursionError:
            raise _fail(path, "JSON nested too deeply to be a Label Studio export", "JSON") from None
        rows, shape_problems, fmt = rows_from_label_studio(doc)
        if rows is None:
            raise _fail(path, shape_problems[0], "JSON")
    else:
        rows, fmt = _rows_from_csv(str(path), text)
        rows = _unescape_rows(rows, {*query_ids, *(earlier or {})}, refs or {}, set(class_names))
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
    writer = _csv.writer(buf, lineterminator="\n")
    writer.writerow(["sample_id", "label"])
    for sid in order if order is not None else list(labels):
        if sid not in labels:
            continue
        idx = int(labels[sid])
        if not 0 <= idx < len(class_names):
            raise ValueError(f"class index {idx} of {sid!r} is out of range 0..{len(class_names) - 1}")
        writer.writerow([sid, class_names[idx]])
    _io.atomic_write_text(path, buf.getvalue())
