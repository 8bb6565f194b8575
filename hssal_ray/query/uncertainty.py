"""Per-sample uncertainty scores from class probabilities (and embeddings for BADGE).

Pure numpy functions (torch tensors are accepted and moved to numpy); they work in row chunks
in float32, so fp16 embeddings and large pools never get a full float32 copy. Every score is
"higher = more uncertain", so all strategies rank the same way.

Columns written to the scores file (see :mod:`hssal_ray.query.scores_io`) are named
``u_<name>``: ``u_badge``, ``u_entropy``, ``u_margin``, ``u_least_confidence``, ``u_disagreement``,
``u_committee``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hssal_ray.errors import DataError

__all__ = [
    "UNCERTAINTIES",
    "score_column",
    "badge_norm",
    "entropy",
    "margin",
    "least_confidence",
    "disagreement",
    "committee",
    "compute_all",
]

UNCERTAINTIES = ("badge", "entropy", "margin", "least_confidence", "disagreement", "committee")
NEEDS_COLUMN = ("disagreement", "committee")
"""Scores that need more than the clean view's probabilities: they exist only as scores-file columns."""
_CHUNK = 16_384


def score_column(name: str) -> str:
    """Column name of an uncertainty in the scores file, e.g. ``"badge" -> "u_badge"``."""
    if name not in UNCERTAINTIES:
        raise ValueError(f"unknown uncertainty {name!r}; valid: {', '.join(UNCERTAINTIES)}")
    return f"u_{name}"


def _as_2d(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise DataError(f"{what} must be a 2-D array (n, k) with k >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def _chunked(probs: Any, fn: Callable[[np.ndarray], np.ndarray], chunk_size: int) -> np.ndarray:
    p = _as_2d(probs, "probs")
    out = np.empty(p.shape[0], dtype=np.float32)
    for s in range(0, p.shape[0], chunk_size):
        out[s : s + chunk_size] = fn(np.asarray(p[s : s + chunk_size], dtype=np.float32))
    return out


def _sum_sq(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def badge_norm(probs: Any, emb: Any, chunk_size: int = _CHUNK) -> np.ndarray:
    """BADGE gradient-embedding norm ``||h_i|| * ||p_i - onehot(argmax p_i)||``.

    It is the norm of the last-layer gradient ``(p - onehot(y_hat)) ⊗ h`` of the cross-entropy at
    the predicted label, so it is large when the model is unsure *and* the feature is strong.
    Uses ``||p - e_j||^2 = sum p^2 - 2 p_j + 1`` with ``j = argmax p`` (no one-hot is built).

    Args:
        probs: (n, C) class probabilities.
        emb: (n, d) embeddings, any float dtype (fp16 is converted chunk by chunk).
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32, in ``[0, ||h|| * sqrt(2)]``.
    """
    p = _as_2d(probs, "probs")
    h = _as_2d(emb, "embeddings")
    if h.shape[0] != p.shape[0]:
        raise DataError(f"probs has {p.shape[0]} rows but embeddings has {h.shape[0]}")
    out = np.empty(p.shape[0], dtype=np.float32)
    for s in range(0, p.shape[0], chunk_size):
        pc = np.asarray(p[s : s + chunk_size], dtype=np.float32)
        hc = np.asarray(h[s : s + chunk_size], dtype=np.float32)
        a2 = _sum_sq(pc) - 2.0 * pc.max(axis=1) + 1.0
        out[s : s + chunk_size] = np.sqrt(np.maximum(a2, 0.0) * _sum_sq(hc))
    return out


def _entropy_chunk(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.maximum(-plogp.sum(axis=1), 0.0)


def entropy(probs: Any, chunk_size: int = _CHUNK) -> np.ndarray:
    """Shannon entropy ``-sum_c p_c log p_c`` in nats (``0 log 0 = 0``).

    Args:
        probs: (n, C) class probabilities.
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32 in ``[0, log C]``.
    """
    return _chunked(probs, _entropy_chunk, chunk_size)


def _margin_chunk(p: np.ndarray) -> np.ndarray:
    if p.shape[1] == 1:
        return 1.0 - p[:, 0]
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def margin(probs: Any, chunk_size: int = _CHUNK) -> np.ndarray:
    """Margin uncertainty ``1 - (p_(1) - p_(2))`` of the two largest probabilities.

    Args:
        probs: (n, C) class probabilities (C == 1: ``p_(2) = 0``).
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32 in ``[0, 1]``; 1 = a tie between the two top classes.
    """
    return _chunked(probs, _margin_chunk, chunk_size)


def least_confidence(probs: Any, chunk_size: int = _CHUNK) -> np.ndarray:
    """Least confidence ``1 - max_c p_c``.

    Args:
        probs: (n, C) class probabilities.
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32 in ``[0, 1 - 1/C]`` for proper distributions.
    """
    return _chunked(probs, lambda p: 1.0 - p.max(axis=1), chunk_size)


def disagreement(probs_weak: Any, probs_strong: Any, chunk_size: int = _CHUNK) -> np.ndarray:
    """Weak/strong-view disagreement: the total-variation distance, plus 1 where the argmax flips.

    ``tv = 0.5 * sum_c |p_weak - p_strong|`` (< 1 when the argmaxes agree), and ``1 + tv`` where
    the two views' argmax classes differ, so every label flip ranks above every agreeing pair and
    flips are ordered among themselves by how far apart the views are (a constant 1 left the
    flips tied, and a top-k over ties falls back to row order).

    Args:
        probs_weak: (n, C) probabilities of the weakly augmented view.
        probs_strong: (n, C) probabilities of the strongly augmented view.
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32 in ``[0, 2]``.
    """
    pw = _as_2d(probs_weak, "probs_weak")
    ps = _as_2d(probs_strong, "probs_strong")
    if pw.shape != ps.shape:
        raise DataError(f"probs_weak has shape {pw.shape} but probs_strong has {ps.shape}")
    out = np.empty(pw.shape[0], dtype=np.float32)
    for s in range(0, pw.shape[0], chunk_size):
        a = np.asarray(pw[s : s + chunk_size], dtype=np.float32)
        b = np.asarray(ps[s : s + chunk_size], dtype=np.float32)
        tv = np.minimum(0.5 * np.abs(a - b).sum(axis=1), 1.0)
        out[s : s + chunk_size] = np.where(a.argmax(1) != b.argmax(1), 1.0 + tv, tv)
    return out


def committee(probs: Any, members: Sequence[Any], chunk_size: int = _CHUNK) -> np.ndarray:
    """Consensus margin of a committee: :func:`margin` of the mean of ``probs`` and ``members``.

    Query by committee with the frozen path's three predictors of a pool row: the student (the
    evaluation head, ``probs``), the supervised teacher and the graph-smoothed pseudo-labels the
    student was trained on (``members``). Rows where the members disagree, or agree on a close
    call, have a small consensus margin. A member row holding NaN (a row the member never saw)
    counts as a copy of ``probs``, so a row no member saw scores its plain margin.

    Args:
        probs: (n, C) class probabilities of the student.
        members: (n, C) probability arrays of the other members (any float dtype).
        chunk_size: rows per float32 block.

    Returns:
        (n,) float32 in ``[0, 1]``; 1 = a tie between the two top classes of the consensus.
    """
    p = _as_2d(probs, "probs")
    ms = [_as_2d(m, "committee member") for m in members]
    for m in ms:
        if m.shape != p.shape:
            raise DataError(f"a committee member has shape {m.shape} but probs has {p.shape}")
    out = np.empty(p.shape[0], dtype=np.float32)
    for s in range(0, p.shape[0], chunk_size):
        pc = np.asarray(p[s : s + chunk_size], dtype=np.float32)
        total = pc.copy()
        for m in ms:
            mc = np.asarray(m[s : s + chunk_size], dtype=np.float32)
            total += np.where(np.isnan(mc).any(axis=1, keepdims=True), pc, mc)
        out[s : s + chunk_size] = _margin_chunk(total / (1 + len(ms)))
    return out


def compute_all(
    probs: Any,
    emb: Any | None,
    probs_strong: Any | None = None,
    members: Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every uncertainty column for the scores file.

    Args:
        probs: (n, C) class probabilities (of the weak/plain view).
        emb: (n, d) embeddings, or None to skip ``u_badge``.
        probs_strong: (n, C) strong-view probabilities, or None to skip ``u_disagreement``.
        members: the other committee members' (n, C) probabilities (:func:`committee`), or None
            to skip ``u_committee``.

    Returns:
        ``{"u_badge", "u_entropy", "u_margin", "u_least_confidence"[, "u_disagreement"]
        [, "u_committee"]}`` of (n,) float32 arrays (``u_badge`` only when ``emb`` is given).
    """
    out: dict[str, np.ndarray] = {}
    if emb is not None:
        out["u_badge"] = badge_norm(probs, emb)
    out["u_entropy"] = entropy(probs)
    out["u_margin"] = margin(probs)
    out["u_least_confidence"] = least_confidence(probs)
    if probs_strong is not None:
        out["u_disagreement"] = disagreement(probs, probs_strong)
    if members is not None:
        out["u_committee"] = committee(probs, members)
    return out
