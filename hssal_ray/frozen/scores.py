"""The frozen learner's ``scores.parquet``: the evaluation head over store rows, block by block."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray.rounds import empty_scores_table, scores_strong_view, scores_table

__all__ = ["write_scores_of", "SCORE_BLOCK_ROWS"]

SCORE_BLOCK_ROWS = 16384
"""Rows scored and written per block (one Parquet row group each)."""


def write_scores_of(
    cfg: Any,
    store: Any,
    head: Any,
    rows: np.ndarray,
    out_path: str,
    num_classes: int,
    members: list[np.ndarray] | None = None,
) -> int:
    """Score store rows ``rows`` with ``head`` into the Parquet file ``out_path``; returns the rows.

    Block by block (:func:`hssal_ray.frozen.infer.score_rows`, one row group each), renamed into
    place when whole; no rows still give a file with the contract's columns. The strong view is
    scored only when the query reads it (:func:`hssal_ray.rounds.scores_strong_view`), as on the
    image-level path, so both write the same columns. The embedding column
    is packed (one ``fixed_size_binary`` value of float16 bytes per row,
    :func:`hssal_ray.query.scores_table.packed_array`): as a Parquet list, its 1,280 values a row
    took most of a 1M-row round writing and reading it.

    ``members``: the committee's other members, ``(len(rows), C)`` each (NaN rows: none), row-aligned
    with ``rows``; given, the file has ``u_committee`` (:func:`hssal_ray.rounds.scores_committee`).
    """
    from hssal_ray.frozen.infer import score_rows
    from hssal_ray.query.scores_table import ScoresWriter

    rows = np.asarray(rows, dtype=np.int64)
    strong_on = scores_strong_view(cfg)
    with ScoresWriter(out_path) as out:
        blocks = score_rows(head, store.views, rows, cfg.frozen.tta_views, SCORE_BLOCK_ROWS, strong=strong_on)
        for s, probs, strong, emb in blocks:
            ids = store.id_array.take(pa.array(rows[s : s + len(probs)]))
            norms = np.ones(len(probs), np.float32)  # the embeddings are unit rows (u_badge's ||h||)
            block = None if members is None else [m[s : s + len(probs)] for m in members]
            out.write(
                scores_table(
                    ids,
                    emb,
                    probs,
                    strong,
                    cfg.ssl.p_cutoff,
                    emb_norms=norms,
                    pack_embeddings=True,
                    members=block,
                )
            )
        if out.rows == 0:  # nothing to score: the file still has the contract's columns
            out.write(
                empty_scores_table(
                    store.dim, num_classes, strong_on, pack_embeddings=True, committee=members is not None
                )
            )
        return int(out.rows)
