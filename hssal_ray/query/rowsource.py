"""A pool's embeddings read on demand: what a strategy indexes instead of a whole ``(n, d)`` array.

An archive's scores file holds 2.6 KB of embedding an image (1M images: 2.5 GB read and held for
each query), while HAL reads a sample of rows for the coarse fit, one streamed pass to assign every
row to a coarse centre and the embeddings of its few candidates; margin or entropy sampling reads
none. A :class:`RowSource` stands in for the array (``Pool.embeddings``): indexing it with rows or a
slice reads those rows only, :func:`hssal_ray.query.kmeans_ops.assign_chunked` and
:func:`hssal_ray.query.base.nonfinite_rows` stream it in blocks, and ``np.asarray`` reads it whole
for the code that needs the matrix (the embedding baselines, cuML). The frozen path's source reads
the embedding store (:class:`hssal_ray.frozen.query_rows.StoreUnitRows`); the values are the ones the
scores file holds, bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["RowSource", "is_row_source"]


class RowSource(ABC):
    """Rows of an ``(n, d)`` float matrix, read when indexed.

    Subclasses implement :meth:`rows` (the float rows at given positions, ascending or not) and set
    ``shape`` and ``dtype``.
    """

    shape: tuple[int, int]
    dtype: np.dtype

    @abstractmethod
    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The ``(len(idx), d)`` rows at positions ``idx`` (int64), in that order, as ``dtype``."""

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix it stands for (what reading it whole would hold)."""
        return int(self.shape[0]) * int(self.shape[1]) * int(np.dtype(self.dtype).itemsize)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.rows(np.arange(len(self), dtype=np.int64)[key])
        if hasattr(key, "numpy") and not isinstance(key, np.ndarray):  # a torch index tensor
            key = key.cpu().numpy()
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        if idx.ndim == 0:
            return self.rows(idx.reshape(1).astype(np.int64))[0]
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"a row source is indexed by a slice or 1-D rows, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return self.rows(np.where(idx < 0, idx + len(self), idx))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.rows(np.arange(len(self), dtype=np.int64))
        return out if dtype is None else out.astype(dtype, copy=False)

    def blocks(self, block_rows: int) -> Any:
        """``(start, rows)`` for consecutive blocks of ``block_rows`` rows (each block read when reached)."""
        n = len(self)
        for s in range(0, n, max(1, block_rows)):
            yield s, self.rows(np.arange(s, min(n, s + block_rows), dtype=np.int64))


def is_row_source(x: Any) -> bool:
    """Whether ``x`` is a :class:`RowSource` (not a numpy array or torch tensor)."""
    return isinstance(x, RowSource)
