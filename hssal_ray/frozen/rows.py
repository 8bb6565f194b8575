"""Reading rows of an embedding store's views (:mod:`hssal_ray.frozen.store`) without mapping them.

:func:`read_rows` and :func:`scan_rows` read rows of a view; a view that maps a whole ``.npy``
file is read with ``pread`` (its pages pass through the page cache into the caller's buffer and
are never mapped into the process), another mapped view is indexed and its pages dropped
(:func:`release`, ``madvise(MADV_DONTNEED)``; the page cache keeps them), so a pass over every
row of a 1M-image view does not leave 2.6 GB resident.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["read_rows", "scan_rows", "RowReader", "release", "file_backed", "SCAN_ROWS"]

SCAN_ROWS = 8192
"""Rows per float32 block of :func:`scan_rows` (40 MB at d=1280)."""


def release(view: np.ndarray) -> None:
    """Drop the pages of a memory-mapped view from this process (they stay in the page cache)."""
    mm = getattr(view, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a kernel without it: nothing held to drop
            pass


def file_backed(view: np.ndarray) -> bool:
    """Whether :func:`read_rows` reads ``view`` with ``pread`` (a view mapping a whole ``.npy`` file)."""
    return _file_of(view) is not None


def _file_of(view: np.ndarray) -> tuple[str, int] | None:
    """``(path, offset of row 0)`` of a view that maps a whole ``.npy`` file (``np.load(mmap_mode=...)``)."""
    if (
        isinstance(view, np.memmap)
        and isinstance(view.base, mmap.mmap)  # the file's own mapping, not a slice of it
        and view.filename
        and view.flags.c_contiguous
    ):
        return str(view.filename), int(view.offset)
    return None


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs of consecutive rows in ``rows``."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])


def read_rows(
    view: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None, fds: dict[str, int] | None = None
) -> np.ndarray:
    """float16 rows ``rows`` of a view, copied (into ``out`` when given).

    A view mapping a ``.npy`` file is read with ``pread``, one call per run of consecutive rows:
    the file's pages pass through the page cache into ``out`` and are never mapped into this
    process (``fds`` caches the open files; without it the file is opened for this call). Other
    arrays are indexed.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if out is None:
        out = np.empty((len(rows), view.shape[1]), dtype=np.float16)
    if len(rows) == 0:
        return out
    where = _file_of(view) if view.dtype == out.dtype and out.flags.c_contiguous else None
    if where is None:
        if int(rows[-1]) - int(rows[0]) == len(rows) - 1 and bool((np.diff(rows) == 1).all()):
            np.copyto(out, view[int(rows[0]) : int(rows[-1]) + 1])
        else:
            np.take(view, rows, axis=0, out=out)
        return out
    path, offset = where
    own = fds is None
    fds = {} if fds is None else fds
    fd = fds.get(path)
    if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    try:
        row_bytes = out.strides[0]
        buf = memoryview(out).cast("B")
        starts, ends = _runs(rows)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            pos, lo, hi = offset + int(rows[a]) * row_bytes, a * row_bytes, b * row_bytes
            while lo < hi:  # pread may return less than asked for
                got = os.preadv(fd, [buf[lo:hi]], pos)
                if got <= 0:
                    raise OSError(f"{path}: short read at byte {pos}")
                lo, pos = lo + got, pos + got
    finally:
        if own:
            os.close(fd)
    return out


class RowReader:
    """Reads rows of views into two reused buffers: float16, then float32 through torch's vectorised
    conversion (numpy's float16 cast is several times slower). A view mapping a file is read with
    ``pread`` (:func:`read_rows`; the files stay open while the reader lives); any other mapped
    view has its pages dropped after each read (:func:`release`). The returned buffers are
    overwritten by the next read.

    Args:
        dim: Feature width.
        rows: The most rows one read returns.
    """

    def __init__(self, dim: int, rows: int) -> None:
        import torch

        self.h = np.empty((max(1, rows), dim), dtype=np.float16)
        self.f = torch.empty((max(1, rows), dim), dtype=torch.float32)
        self.fds: dict[str, int] = {}

    def read16(self, view: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float16 ``(len(rows), dim)`` rows of ``view`` (in the reused buffer)."""
        m = len(rows)
        read_rows(view, rows, self.h[:m], self.fds)
        if _file_of(view) is None:
            release(view)
        return self.h[:m]

    def read(self, view: np.ndarray, rows: np.ndarray) -> Any:
        """float32 torch ``(len(rows), dim)`` rows of ``view``."""
        import torch

        m = len(rows)
        return self.f[:m].copy_(torch.from_numpy(self.read16(view, rows)))

    def close(self) -> None:
        """Close the files opened for reading."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


def scan_rows(view: np.ndarray, rows: np.ndarray, chunk: int = SCAN_ROWS) -> Iterator[tuple[int, Any]]:
    """``(start, x)`` for consecutive blocks of ``rows``: ``x`` holds rows ``rows[start:start+len(x)]``.

    ``x`` is a float32 torch tensor read by a :class:`RowReader`: use (or copy) it before asking
    for the next block.
    """
    rows = np.asarray(rows, dtype=np.int64)
    reader = RowReader(view.shape[1], min(chunk, len(rows)))
    for s in range(0, len(rows), chunk):
        yield s, reader.read(view, rows[s : s + chunk])
