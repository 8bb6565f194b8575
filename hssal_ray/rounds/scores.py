"""The rows of ``scores.parquet`` from model outputs: the one builder both learners write with. No Ray.

Column names and types are the scores contract's (:func:`hssal_ray.query.scores_table.scores_arrow_table`);
which columns a round writes is decided here from what the model produced, and whether a strong view
is scored at all is :func:`hssal_ray.rounds.policy.scores_strong_view`, asked by both learners.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["scores_table", "empty_scores_table"]


def scores_table(
    ids: np.ndarray | pa.Array,
    emb: np.ndarray,
    probs: np.ndarray,
    probs_strong: np.ndarray | None,
    p_cutoff: float,
    emb_norms: np.ndarray | None = None,
    *,
    pack_embeddings: bool = False,
    members: list[np.ndarray] | None = None,
) -> pa.Table:
    """The scores contract table of model outputs (pure numpy): uncertainties, prediction, confidence.

    Args:
        ids: ``(n,)`` sample ids (or an Arrow string array, used as it is).
        emb: ``(n, d)`` L2-normalised embeddings (stored as fp16).
        probs: ``(n, C)`` class probabilities of the clean view.
        probs_strong: ``(n, C)`` probabilities of a strong view, or None: then the table has no
            ``u_disagreement`` and no ``confident`` column.
        p_cutoff: Threshold of the ``confident`` column: both views predict the same class with
            probability >= ``p_cutoff`` (what ``query.ssl_aware`` leaves out).
        emb_norms: ``(n,)`` norms of the embeddings when known (``u_badge`` then reads them instead
            of converting ``emb``: the frozen path passes float16 unit rows).
        pack_embeddings: One ``fixed_size_binary`` value per row for the embedding column instead
            of a list (:func:`hssal_ray.query.scores_table.packed_array`; the frozen path).
        members: The other committee members' ``(n, C)`` probabilities (NaN rows: none), or None:
            then the table has no ``u_committee`` (:func:`hssal_ray.query.uncertainty.committee`).
    """
    from hssal_ray.query.scores_io import scores_arrow_table
    from hssal_ray.query.uncertainty import compute_all

    conf = None
    if probs_strong is not None:
        conf = (
            (probs.max(1) >= p_cutoff)
            & (probs_strong.max(1) >= p_cutoff)
            & (probs.argmax(1) == probs_strong.argmax(1))
        )
    return scores_arrow_table(
        ids if isinstance(ids, pa.Array) else np.asarray([str(s) for s in ids], dtype=object),
        np.asarray(emb, dtype=np.float16),
        probs,
        compute_all(
            probs, emb if emb_norms is None else np.asarray(emb_norms)[:, None], probs_strong, members
        ),
        conf,
        probs.argmax(1),
        pack_embeddings=pack_embeddings,
    )


def empty_scores_table(
    dim: int, num_classes: int, strong: bool, *, pack_embeddings: bool = False, committee: bool = False
) -> pa.Table:
    """A table of no rows with the columns a round that scored nothing would have written."""
    none = np.zeros((0, num_classes), np.float32)
    emb = np.zeros((0, dim), np.float16)
    return scores_table(
        pa.array([], pa.string()),
        emb,
        none,
        none if strong else None,
        1.0,
        pack_embeddings=pack_embeddings,
        members=[none] if committee else None,
    )
