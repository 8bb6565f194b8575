"""Fetch the encoded bytes of manifest rows: :func:`load_bytes` (files, or shard rows).

Shard rows are grouped by shard and only the row groups that hold them are read, with a small
per-process LRU of open shards and row groups; a shard rewritten in place while a process has it
cached is not re-opened. Nothing raises for a missing or unreadable image: its entry is ``None``
and the caller reports it as a bad sample.

On a local data root a file is used only if it is a regular file (a FIFO or a device is never
opened for reading: it could block forever) and, unless ``follow_symlinks`` is set, only if its
resolved path lies inside the resolved root, the rule the catalog scan applies (checked again
here because files can change after the scan).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hssal_ray import _io

__all__ = ["load_bytes", "load_image_hwc", "root_fs", "inside", "file_kind"]

log = logging.getLogger(__name__)

_FS_CACHE: dict[str, tuple[pafs.FileSystem, str]] = {}
_REAL_ROOTS: dict[str, str | None] = {}
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


def _real_root(root: str) -> str | None:
    """The resolved local path of a root (``None`` for object stores, which have no links)."""
    key = str(root)
    if key not in _REAL_ROOTS:
        fs, base = root_fs(key)
        _REAL_ROOTS[key] = os.path.realpath(base) if isinstance(fs, pafs.LocalFileSystem) else None
    return _REAL_ROOTS[key]


def inside(real: str, real_root: str) -> bool:
    """Whether the resolved path ``real`` is ``real_root`` or below it."""
    return real == real_root or real.startswith(os.path.join(real_root, ""))


def file_kind(mode: int) -> str:
    """A file type in words (``fifo``, ``socket``, ...) from ``st_mode``."""
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _open_local(path: str, real_root: str, follow_symlinks: bool) -> tuple[int | None, str]:
    """A read-only descriptor of a regular file under the root, or ``(None, why not)``.

    Opened non-blocking (a FIFO's open would otherwise wait for a writer) and checked with
    ``fstat`` on that descriptor, so what is checked is what is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        if not follow_symlinks:
            real = os.path.realpath(path)
            if not inside(real, real_root):
                return None, f"symlink outside data root: {real}"
            path, flags = real, flags | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
    except OSError as e:
        return None, f"cannot open: {e.strerror or e}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        return None, f"cannot stat: {e.strerror or e}"
    if not stat.S_ISREG(mode):
        os.close(fd)
        return None, f"not a regular file ({file_kind(mode)})"
    return fd, ""


def _read_local(path: str, real_root: str, follow_symlinks: bool) -> tuple[bytes | None, str]:
    fd, why = _open_local(path, real_root, follow_symlinks)
    if fd is None:
        return None, why
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(), ""
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"


def _column(rows: Any, name: str) -> list[Any]:
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        return rows.column(name).to_pylist()
    if isinstance(rows, Mapping) or hasattr(rows, "columns"):  # dict of arrays, pandas DataFrame
        return [x.item() if isinstance(x, np.generic) else x for x in list(rows[name])]
    raise TypeError(f"rows must be a pyarrow Table/RecordBatch, a mapping or a DataFrame, got {type(rows)}")


def _shard_rows(
    fs: pafs.FileSystem, base: str, source: str, rows: Sequence[int], real_root: str | None, follow: bool
) -> tuple[list[bytes | None], str]:
    """Image bytes of ``rows`` of one shard, reading only the row groups that hold them, and why
    the shard could not be read (``""`` when it could)."""
    key = (base, source)
    with _LOCK:
        try:
            if key in _SHARDS:
                _SHARDS.move_to_end(key)
                pf, starts = _SHARDS[key]
            else:
                path = f"{base.rstrip('/')}/{source}"
                if real_root is not None:  # a local shard: the same checks as an image file
                    fd, why = _open_local(path, real_root, follow)
                    if fd is None:
                        log.warning("cannot read shard %s: %s", source, why)
                        return [None] * len(rows), why
                    os.close(fd)
                pf = pq.ParquetFile(fs.open_input_file(path))
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
            return out, ""
        except (OSError, pa.ArrowException, ValueError, KeyError) as e:
            log.warning("cannot read rows of shard %s: %s", source, e)
            _SHARDS.pop(key, None)
            return [None] * len(rows), f"cannot read shard {source}: {e}"


def load_bytes(
    root: str,
    kind: str,
    rows: Any,
    *,
    follow_symlinks: bool = False,
    unreadable: dict[int, str] | None = None,
) -> list[bytes | None]:
    """Fetch the encoded bytes of a batch of manifest rows.

    Args:
        root: The catalog's root (local path or URI).
        kind: The catalog's kind, ``files`` or ``shards``.
        rows: ``B`` manifest rows with at least ``source`` and ``row`` columns: a pyarrow Table or
            RecordBatch, a mapping of column -> sequence (a Ray Data numpy batch) or a DataFrame.
        follow_symlinks: Read local files whose resolved path is outside the root too (the
            default refuses them, like the catalog scan).
        unreadable: If given, filled with ``position -> why`` for every ``None`` entry.

    Returns:
        ``B`` entries in input order: the encoded bytes, or ``None`` where the file or shard row is
        missing, unreadable, not a regular file or (by default) a link out of the root (the caller
        reports those as bad samples; nothing raises).
    """
    if kind not in ("files", "shards"):
        raise ValueError(f"kind must be 'files' or 'shards', got {kind!r}")
    fs, base = root_fs(root)
    real_root = _real_root(root)
    why = unreadable if unreadable is not None else {}
    sources = [str(s) for s in _column(rows, "source")]
    out: list[bytes | None] = [None] * len(sources)
    if kind == "files":
        for i, src in enumerate(sources):
            path = f"{base.rstrip('/')}/{src}"
            if real_root is not None:
                out[i], reason = _read_local(path, real_root, follow_symlinks)
                if out[i] is None:
                    why[i] = reason
                    log.debug("cannot read %s: %s", src, reason)
                continue
            try:
                with fs.open_input_file(path) as f:
                    out[i] = f.read()
            except (OSError, pa.ArrowException) as e:
                why[i] = f"cannot open: {e}"
                log.debug("cannot read %s: %s", src, e)
        return out
    row_ids = [int(r) for r in _column(rows, "row")]
    groups: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        groups.setdefault(src, []).append(i)
    for src, positions in groups.items():
        blobs, reason = _shard_rows(
            fs, base, src, [row_ids[p] for p in positions], real_root, follow_symlinks
        )
        for pos, blob in zip(positions, blobs, strict=True):
            out[pos] = blob
            if blob is None:
                why[pos] = reason or f"no image in row {row_ids[pos]} of shard {src}"
    return out


def load_image_hwc(catalog: Any, data_cfg: Any, sample_id: str) -> Any:
    """One image of ``catalog`` as an HWC uint8 array with 3 bands, decoded with the run's data
    settings ``data_cfg`` (bands, ``band_select``, ``value_range``): what the hand-off files that
    people label from embed (the loop's human oracles, ``python -m hssal_ray.assess``).

    Raises:
        DataError: The image cannot be read.
    """
    import numpy as np
    import pyarrow.compute as pc

    from hssal_ray.data.decode import decode_image
    from hssal_ray.errors import DataError

    t = catalog.table
    row = t.filter(pc.equal(t.column("sample_id"), sample_id))
    why: dict[int, str] = {}
    data = load_bytes(
        catalog.root, catalog.kind, row, follow_symlinks=data_cfg.follow_symlinks, unreadable=why
    )[0]
    if data is None:
        raise DataError(f"cannot read {sample_id}: {why.get(0, 'missing')}")
    img = decode_image(
        data,
        bands=data_cfg.bands,
        max_pixels=data_cfg.max_image_pixels,
        select=data_cfg.band_select,
        value_range=data_cfg.value_range,
    )
    return np.transpose(img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0), (1, 2, 0))
