"""Reading label files as text for :mod:`hssal_ray.oracle.labels`: bytes checks, format, CSV/TSV rows.

Files are only ever parsed as text (``csv``/``json``), never unpickled or evaluated.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import sys
from collections.abc import Collection, Iterator
from dataclasses import replace

from hssal_ray import _csv, _io
from hssal_ray.errors import LabelFileError
from hssal_ray.oracle._label_check import _fail
from hssal_ray.oracle._label_studio import LabelRow


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


def _unescape_rows(
    rows: list[LabelRow], ids: Collection[str], refs: Collection[str], classes: Collection[str]
) -> list[LabelRow]:
    """Map cells escaped against spreadsheet formulas back to the ids, refs and classes they name.

    The files the run hands out (``labels_template.csv``, ``labels.csv``) escape cells a spreadsheet
    would evaluate (:mod:`hssal_ray._csv`); a returned file may keep or lose that escape.
    """
    return [
        replace(
            row,
            sample_id=_csv.resolve(row.sample_id, ids),
            ref=_csv.resolve(row.ref, refs),
            label=_csv.resolve(row.label, classes),
        )
        for row in rows
    ]


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
