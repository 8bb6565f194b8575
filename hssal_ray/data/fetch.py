"""Fetch the encoded bytes of manifest rows: :func:`load_bytes` (files, or shard rows).

Shard rows are grouped by shard and only the row groups that hold them are read, with a small
per-process LRU of open shards and row groups; a shard rewritten in place while a process has it
cached is not re-opened. Nothing raises for a missing or unreadable image: its entry is ``None``
and the caller reports it as a bad sample.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hssal_ray import _io

__all__ = ["load_bytes", "root_fs"]

log = logging.getLogger(__name__)

_FS_CACHE: dict[str, tuple[pafs.FileSystem, str]] = {}
_SHARDS: OrderedDict[tuple[str, str], tuple[pq.ParquetFile, np.ndarray]] = OrderedDict()
_GROUPS: OrderedDict[tuple[str, str, int], pa.Array] = OrderedDict()
_MAX_SHARDS, _MAX_GROUPS = 8, 4
_LOCK = threading.Lock()


def root_fs(root: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a root, cached per process (S3/GCS clients are costly)."""
    key = str(root)
    if key not in _FS_CACHE:
        _FS_CACHE[key] = _io.resolve_fs(key)
    return _FS_CACHE[key]


def _column(rows: Any, name: str) -> list[Any]:
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        return rows.column(name).to_pylist()
    if isinstance(rows, Mapping) or hasattr(rows, "columns"):  # dict of arrays, pandas DataFrame
        return [x.item() if isinstance(x, np.generic) else x for x in list(rows[name])]
    raise TypeError(f"rows must be a pyarrow Table/RecordBatch, a mapping or a DataFrame, got {type(rows)}")


def _shard_rows(fs: pafs.FileSystem, base: str, source: str, rows: Sequence[int]) -> list[bytes | None]:
    """Image bytes of ``rows`` of one shard, reading only the row groups that hold them."""
    key = (base, source)
    with _LOCK:
        try:
            if key in _SHARDS:
                _SHARDS.move_to_end(key)
                pf, starts = _SHARDS[key]
            else:
                pf = pq.ParquetFile(fs.open_input_file(f"{base.rstrip('/')}/{source}"))
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
                starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
                _SHARDS[key] = (pf, starts)
                while len(_SHARDS) > _MAX_SHARDS:
                    _SHARDS.popitem(last=False)
            out: list[bytes | None] = []
            for r in rows:
                if r < 0 or r >= starts[-1]:
                    out.append(None)
                    continue
                g = int(np.searchsorted(starts, r, side="right") - 1)
                gkey = (base, source, g)
                if gkey in _GROUPS:
                    _GROUPS.move_to_end(gkey)
                else:
                    _GROUPS[gkey] = pf.read_row_group(g, columns=["image"]).column("image").combine_chunks()
                    while len(_GROUPS) > _MAX_GROUPS:
                        _GROUPS.popitem(last=False)
                out.append(_GROUPS[gkey][int(r - starts[g])].as_py())
            return out
        except (OSError, pa.ArrowException, ValueError, KeyError) as e:
            log.warning("cannot read rows of shard %s: %s", source, e)
            _SHARDS.pop(key, None)
            return [None] * len(rows)


def load_bytes(root: str, kind: str, rows: Any) -> list[bytes | None]:
    """Fetch the encoded bytes of a batch of manifest rows.

    Args:
        root: The catalog's root (local path or URI).
        kind: The catalog's kind, ``files`` or ``shards``.
        rows: ``B`` manifest rows with at least ``source`` and ``row`` columns: a pyarrow Table or
            RecordBatch, a mapping of column -> sequence (a Ray Data numpy batch) or a DataFrame.

    Returns:
        ``B`` entries in input order: the encoded bytes, or ``None`` where the file or shard row is
        missing or unreadable (the caller reports those as bad samples; nothing raises).
    """
    if kind not in ("files", "shards"):
        raise ValueError(f"kind must be 'files' or 'shards', got {kind!r}")
    fs, base = root_fs(root)
    sources = [str(s) for s in _column(rows, "source")]
    out: list[bytes | None] = [None] * len(sources)
    if kind == "files":
        for i, src in enumerate(sources):
            try:
                with fs.open_input_file(f"{base.rstrip('/')}/{src}") as f:
                    out[i] = f.read()
            except (OSError, pa.ArrowException) as e:
                log.debug("cannot read %s: %s", src, e)
        return out
    row_ids = [int(r) for r in _column(rows, "row")]
    groups: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        groups.setdefault(src, []).append(i)
    for src, positions in groups.items():
        for pos, blob in zip(
            positions, _shard_rows(fs, base, src, [row_ids[p] for p in positions]), strict=True
        ):
            out[pos] = blob
    return out
