"""The frozen query's embeddings straight from the store: the scores file's values, read by row.

The frozen path's scores file holds each row's clean view, L2-normalised, as float16
(:func:`hssal_ray.frozen.infer.score_rows`): the same every round, since the encoder is frozen.
:class:`StoreUnitRows` computes those values from the store's clean view for the rows a strategy
asks for (the same float32 arithmetic, :func:`hssal_ray.frozen.infer.unit_into`, in blocks of
:data:`~hssal_ray.frozen.infer.UNIT_BLOCK` rows; a row's value does not depend on which rows share its
block: ``tests/unit/frozen/test_scores.py`` gathers 1 to 2,500 rows), so the loop's query no longer reads the
scores file's embedding column: at 1M images that column is 2.5 GB read and held for each query,
while HAL reads a sample, one streamed pass and its candidates, and margin or entropy none.
"""

from __future__ import annotations

import numpy as np
import torch

from hssal_ray.frozen.infer import UNIT_BLOCK, inverse_norms, unit_into
from hssal_ray.frozen.rows import RowReader
from hssal_ray.query.rowsource import RowSource

__all__ = ["StoreUnitRows"]


class StoreUnitRows(RowSource):
    """Rows ``store_rows`` of a store view as float16 unit rows, read on demand (a :class:`RowSource`).

    Args:
        view: The store's clean view, ``(N, d)`` float16 (memory-mapped; read with ``pread``).
        store_rows: ``(n,)`` store row of each pool row, in the pool's order.
        arithmetic: ``"scores"``: the scores file's values (:func:`~hssal_ray.frozen.infer.unit_into`,
            the rounds' queries); ``"normalize"``: ``torch.nn.functional.normalize``'s, which the
            cold start's features have always used (the two differ in the last bit of ~1% of UCM's
            rows, so each path keeps its own and its batches stay what they were).
    """

    def __init__(self, view: np.ndarray, store_rows: np.ndarray, arithmetic: str = "scores") -> None:
        if arithmetic not in ("scores", "normalize"):
            raise ValueError(f"arithmetic must be 'scores' or 'normalize', got {arithmetic!r}")
        self.arithmetic = arithmetic
        self.view = view
        self.store_rows = np.asarray(store_rows, dtype=np.int64)
        self.shape = (len(self.store_rows), int(view.shape[1]))
        self.dtype = np.dtype(np.float16)
        self._reader = RowReader(self.shape[1], UNIT_BLOCK)  # pread into reused buffers

    def rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shape[1]), dtype=np.float16)
        src = self.store_rows[np.asarray(idx, dtype=np.int64)]
        for s in range(0, len(src), UNIT_BLOCK):
            b = self._reader.read(self.view, src[s : s + UNIT_BLOCK])  # float32, as the scores path
            if self.arithmetic == "scores":
                unit_into(b, inverse_norms(b), out[s : s + len(b)])
            else:
                torch.from_numpy(out[s : s + len(b)]).copy_(
                    torch.nn.functional.normalize(b, dim=1, eps=1e-12)
                )
        return out

    def close(self) -> None:
        """Close the store files opened for reading."""
        self._reader.close()

    def __repr__(self) -> str:
        return f"StoreUnitRows({self.shape[0]} rows of d={self.shape[1]})"
