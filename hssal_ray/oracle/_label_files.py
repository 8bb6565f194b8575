"""Reading label files as text for :mod:`hssal_ray.oracle.labels`: file checks, bytes checks, format,
CSV/TSV rows.

A label file is refused before a byte is read when it is not a regular file (a FIFO would block
the reader forever, a device never ends) or larger than :data:`MAX_LABEL_FILE_BYTES`. Files are
only ever parsed as text (``csv``/``json``), never unpickled or evaluated.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import os
import stat
import sys
from collections.abc import Collection, Iterator
from dataclasses import replace

from hssal_ray import _csv, _io
from hssal_ray.errors import LabelFileError
from hssal_ray.oracle._label_check import _fail
from hssal_ray.oracle._label_studio import LabelRow

MAX_LABEL_FILE_BYTES = 64 * 2**20
"""Largest label file read (64 MiB). Parsing takes several times the file's size in memory, and a
round's export is far smaller (a task with its embedded 256 px image is ~30 KB): a larger file is
refused before it is read."""

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def check_label_file(path: str) -> None:
    """Refuse a label file that is missing, not a regular file, or over :data:`MAX_LABEL_FILE_BYTES`.

    Looks only at what the file is: it is opened without blocking (a named pipe with no writer
    returns at once) and never read.

    Raises:
        LabelFileError: One line naming the file and what to do.
    """
    if _io.is_uri(path):
        _check_remote(path)
        return
    with _open_local(path) as fd:
        _check_stat(path, os.fstat(fd))


def _read_bytes(path: str) -> bytes:
    """The file's bytes, after the checks of :func:`check_label_file` on the very file opened."""
    if _io.is_uri(path):
        size = _check_remote(path)
        data = _io.read_bytes(path)
        if len(data) != size:
            raise _fail(path, "the file changed while it was read; read it again once it is complete")
        return data
    with _open_local(path) as fd:
        _check_stat(path, os.fstat(fd))
        os.set_blocking(fd, True)
        chunks, left = [], MAX_LABEL_FILE_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 2**20))):
            chunks.append(chunk)
            left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise _fail(path, _too_big(len(data)))
    return data


@contextlib.contextmanager
def _open_local(path: str) -> Iterator[int]:
    """``path`` opened without blocking (``O_NONBLOCK``: opening a FIFO returns at once)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path.removeprefix("file://"), flags)
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except OSError as e:  # no permission, a dangling link, ...
        raise _fail(path, f"cannot read it ({e.strerror or type(e).__name__})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _check_stat(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise _fail(path, f"{kind}, not a regular file; pass the exported label file itself")
    if st.st_size > MAX_LABEL_FILE_BYTES:
        raise _fail(path, _too_big(st.st_size))


def _check_remote(path: str) -> int:
    import pyarrow.fs as pafs

    try:
        fs, p = _io.resolve_fs(path)
        info = fs.get_file_info(p)
    except (OSError, ValueError) as e:
        raise _fail(path, f"cannot read it ({type(e).__name__}: {e})") from None
    if info.type == pafs.FileType.NotFound:
        raise _fail(path, "file not found")
    if info.type != pafs.FileType.File:
        raise _fail(path, "not a regular file; pass the exported label file itself")
    size = int(info.size or 0)
    if size > MAX_LABEL_FILE_BYTES:
        raise _fail(path, _too_big(size))
    return size


def _too_big(size: int) -> str:
    return (
        f"{size:,} bytes, over the {MAX_LABEL_FILE_BYTES // 2**20} MiB limit for label files; "
        "export only this round's tasks (or a CSV sample_id,label)"
    )


def _read_text(path: str) -> str:
    try:
        data = _read_bytes(path)
    except LabelFileError:
        raise
    except (OSError, ValueError) as e:  # an I/O error, a bad URI, ...
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
    except (json.JSONDecodeError, RecursionError):
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
