"""Writing the scores contract (see :mod:`hssal_ray.query.scores_io` for its columns).

:func:`scores_arrow_table` is the one place that names and types the columns; :class:`ScoresWriter`
streams a file block by block (one Parquet row group or more per block) and renames it into place
when whole (the frozen path scores a pool of any size in bounded memory); :func:`write_scores`
writes a file or a directory of parts atomically (tests, benchmarks); :func:`parquet_write_options`
are the options Ray Data's scoring writes with.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hssal_ray import _io

logger = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask is process-wide, not thread-safe to probe

LIST_COLUMNS = ("embedding", "probs")
CONFIDENT_COLUMN = "confident"
"""The scores column ``query.ssl_aware`` reads: both SSL views pseudo-label the sample confidently."""


PACKED_DTYPE_KEY = b"hssal.dtype"
"""Field metadata key of a packed list column: the numpy dtype of its values (``float16``/``float32``)."""


def packed_array(mat: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """Rows of ``(n, d)`` float16/float32 ``mat`` as one ``fixed_size_binary(d * itemsize)`` value each.

    The bytes of each row, little-endian, with the dtype in the field's metadata
    (:data:`PACKED_DTYPE_KEY`). A Parquet list column stores a repetition and a definition level
    per value (1.28 billion values for a million 1280-d rows): packed, a row is one value, and
    writing and reading it is a copy of the buffer (about 15 and 10 times faster).
    """
    mat = np.ascontiguousarray(mat)
    if mat.dtype not in (np.float16, np.float32) or mat.ndim != 2:
        raise ValueError(f"a packed column holds (n, d) float16/float32 rows, got {mat.dtype} {mat.shape}")
    n, w = mat.shape
    buf = pa.py_buffer(mat.astype(mat.dtype.newbyteorder("<"), copy=False))
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(w * mat.dtype.itemsize), n, [None, buf])
    return pa.field("embedding", arr.type, nullable=False, metadata={PACKED_DTYPE_KEY: mat.dtype.name}), arr


def _list_array(mat: np.ndarray) -> pa.Array:
    mat = np.ascontiguousarray(mat)
    n, w = mat.shape
    flat = pa.array(mat.reshape(-1))
    if n * w < 2**31 - 1:
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int32)), flat)
    return pa.LargeListArray.from_arrays(pa.array(np.arange(0, n * w + 1, w, dtype=np.int64)), flat)


def parquet_write_options(column_names: Sequence[str]) -> dict[str, Any]:
    """``pyarrow.parquet.write_table`` options that make a scores file fast to read.

    Dictionary encoding of float16 list values (fixed_len_byte_array(2)) makes reads several times
    slower, and random fp16/fp32 values do not compress: list columns are written PLAIN and
    uncompressed, the rest with snappy. Nothing filters on a list value, so list columns get no
    min/max statistics (computing them per value took ~20% of the write). Pass the same options to
    Ray Data's ``write_parquet(..., arrow_parquet_args=...)``.
    """
    return {
        "use_dictionary": False,
        "compression": {c: ("NONE" if c in LIST_COLUMNS else "SNAPPY") for c in column_names},
        "write_statistics": [c for c in column_names if c not in LIST_COLUMNS],
    }


class ScoresWriter:
    """Writes a scores file block by block; the file appears (renamed into place) only when closed whole.

    Local paths are written to a temporary file next to the target and renamed; a URI is written
    to a local temporary file and then copied in one upload (an object store shows it whole or
    not at all). An exception inside the ``with`` block removes the temporary file and leaves any
    previous file untouched. Every block must have the same columns (:func:`scores_arrow_table`).

    Args:
        path: The target file (local path or URI).
        row_group_size: Most rows per Parquet row group.
    """

    def __init__(self, path: str, row_group_size: int = 65_536) -> None:
        self.path = str(path)
        self.row_group_size = row_group_size
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        local = self.path[len("file://") :] if self.path.startswith("file://") else self.path
        d = tempfile.gettempdir() if _io.is_uri(self.path) else os.path.dirname(os.path.abspath(local))
        os.makedirs(d, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".tmp", dir=d)
        os.close(fd)
        self._target = local

    def write(self, table: pa.Table) -> None:
        """Append a block of rows (the first block fixes the schema)."""
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._tmp, table.schema, **parquet_write_options(table.column_names)
            )
        elif table.schema != self._writer.schema:
            raise ValueError(f"scores block schema {table.schema} differs from {self._writer.schema}")
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file and put it in place (an empty file when no block was written)."""
        if self._writer is None:
            raise ValueError(f"no scores written to {self.path}")
        self._writer.close()
        try:
            if _io.is_uri(self.path):
                fs, p = _io.resolve_fs(self.path)
                fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(self._tmp, p, destination_filesystem=fs)
                os.unlink(self._tmp)
            else:
                os.chmod(self._tmp, 0o666 & ~_UMASK)
                os.replace(self._tmp, self._target)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop what was written (the target is left as it was)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                logger.debug("closing an aborted scores writer failed", exc_info=True)
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> ScoresWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_table(path: str, table: pa.Table, row_group_size: int) -> None:
    with ScoresWriter(path, row_group_size) as w:
        w.write(table)


def scores_arrow_table(
    sample_ids: Sequence[str] | np.ndarray,
    embeddings: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    confident: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    pack_embeddings: bool = False,
) -> pa.Table:
    """The scores contract as an Arrow table: the one place that names and types its columns.

    Args:
        sample_ids: (n,) ids (a sequence, numpy array or Arrow string array).
        embeddings: (n, d) float16 or float32 (kept as given): a ``list`` column, or with
            ``pack_embeddings`` one ``fixed_size_binary`` value per row (:func:`packed_array`).
        probs: (n, C) probabilities (stored as float32).
        scores: ``u_<name>`` -> (n,) floats.
        confident: (n,) bool (column :data:`CONFIDENT_COLUMN`).
        pred: (n,) int.
    """
    n = len(sample_ids)
    if isinstance(sample_ids, pa.ChunkedArray):
        sample_ids = sample_ids.combine_chunks()
    ids = (
        sample_ids.cast(pa.string())
        if isinstance(sample_ids, pa.Array)
        else pa.array(np.asarray(sample_ids, dtype=object), type=pa.string())
    )
    cols: dict[str, Any] = {"sample_id": ids}
    fields: dict[str, pa.Field] = {}
    if embeddings is not None:
        emb = np.asarray(embeddings)
        emb = emb if emb.dtype == np.float16 else emb.astype(np.float32, copy=False)
        if pack_embeddings:
            fields["embedding"], cols["embedding"] = packed_array(emb)
        else:
            cols["embedding"] = _list_array(emb)
    if probs is not None:
        cols["probs"] = _list_array(np.asarray(probs, dtype=np.float32))
    for k, v in (scores or {}).items():
        if not k.startswith("u_"):
            raise ValueError(f"score columns are named u_<name>, got {k!r}")
        cols[k] = pa.array(np.asarray(v, dtype=np.float32))
    if confident is not None:
        cols[CONFIDENT_COLUMN] = pa.array(np.asarray(confident, dtype=bool))
    if pred is not None:
        cols["pred"] = pa.array(np.asarray(pred, dtype=np.int64))
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"column {k!r} has {len(v)} rows, sample_ids has {n}")
    schema = pa.schema([fields.get(k, pa.field(k, v.type)) for k, v in cols.items()])
    return pa.table(cols, schema=schema)


def write_scores(
    path: str,
    sample_ids: Sequence[str] | np.ndarray,
    embeddings: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    confident: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    num_parts: int = 1,
    row_group_size: int = 65_536,
    pack_embeddings: bool = False,
) -> None:
    """Write a scores file (atomically); ``num_parts > 1`` writes a directory of part files.

    Columns as :func:`scores_arrow_table`; ``num_parts`` mimics Ray Data's output; ``row_group_size``
    is the Parquet row-group size; ``pack_embeddings`` as :func:`scores_arrow_table`.
    """
    n = len(sample_ids)
    table = scores_arrow_table(
        sample_ids, embeddings, probs, scores, confident, pred, pack_embeddings=pack_embeddings
    )
    if num_parts <= 1:
        _write_table(str(path), table, row_group_size)
        return
    _io.makedirs(str(path))
    step = -(-n // num_parts)
    for i in range(num_parts):
        _write_table(
            _io.join(str(path), f"part-{i:05d}.parquet"), table.slice(i * step, step), row_group_size
        )
