"""Writing the scores contract (see :mod:`hssal_ray.query.scores_io` for its columns).

:func:`scores_arrow_table` is the one place that names and types the columns; :func:`write_scores`
writes a file or a directory of parts atomically (tests, benchmarks and the frozen path);
:func:`parquet_write_options` are the options Ray Data's scoring writes with.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hssal_ray import _io

logger = logging.getLogger(__name__)

LIST_COLUMNS = ("embedding", "probs")
CONFIDENT_COLUMN = "confident"
"""The scores column ``query.ssl_aware`` reads: both SSL views pseudo-label the sample confidently."""


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
    uncompressed, the rest with snappy. Pass the same options to Ray Data's
    ``write_parquet(..., arrow_parquet_args=...)``.
    """
    return {
        "use_dictionary": False,
        "compression": {c: ("NONE" if c in LIST_COLUMNS else "SNAPPY") for c in column_names},
    }


def _write_table(path: str, table: pa.Table, row_group_size: int) -> None:
    opts = parquet_write_options(table.column_names)
    if _io.is_uri(path):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_size, **opts)
        _io.atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return
    path = path[len("file://") :] if path.startswith("file://") else path
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    os.close(fd)
    try:  # streamed to a temp file next to the target, then renamed: atomic, no in-memory copy
        pq.write_table(table, tmp, row_group_size=row_group_size, **opts)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def scores_arrow_table(
    sample_ids: Sequence[str] | np.ndarray,
    embeddings: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    confident: np.ndarray | None = None,
    pred: np.ndarray | None = None,
) -> pa.Table:
    """The scores contract as an Arrow table: the one place that names and types its columns.

    Args:
        sample_ids: (n,) ids.
        embeddings: (n, d) float16 or float32 (kept as given).
        probs: (n, C) probabilities (stored as float32).
        scores: ``u_<name>`` -> (n,) floats.
        confident: (n,) bool (column :data:`CONFIDENT_COLUMN`).
        pred: (n,) int.
    """
    n = len(sample_ids)
    cols: dict[str, Any] = {"sample_id": pa.array(np.asarray(sample_ids, dtype=object), type=pa.string())}
    if embeddings is not None:
        emb = np.asarray(embeddings)
        cols["embedding"] = _list_array(
            emb if emb.dtype == np.float16 else emb.astype(np.float32, copy=False)
        )
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
    return pa.table(cols)


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
) -> None:
    """Write a scores file (atomically); ``num_parts > 1`` writes a directory of part files.

    Columns as :func:`scores_arrow_table`; ``num_parts`` mimics Ray Data's output; ``row_group_size``
    is the Parquet row-group size.
    """
    n = len(sample_ids)
    table = scores_arrow_table(sample_ids, embeddings, probs, scores, confident, pred)
    if num_parts <= 1:
        _write_table(str(path), table, row_group_size)
        return
    _io.makedirs(str(path))
    step = -(-n // num_parts)
    for i in range(num_parts):
        _write_table(
            _io.join(str(path), f"part-{i:05d}.parquet"), table.slice(i * step, step), row_group_size
        )
