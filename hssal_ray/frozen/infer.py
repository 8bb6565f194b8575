"""Inference of the frozen path's head on stored views: predictions, TTA averages and the round's scores.

:class:`_Forward` folds the head's ``[L2Normalize] + Standardize + Linear`` into one matrix product
on cache-sized float32 blocks; :func:`head_predict`, :func:`predict_views` (the clean view and
``frozen.tta_views`` weak views averaged) and :func:`score_rows` (what the scores file needs, block by
block) read the rows with a :class:`~hssal_ray.frozen.store.RowReader`. The head is built by
:func:`hssal_ray.frozen.head.build_head`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from hssal_ray.frozen.head import L2Normalize

__all__ = ["head_predict", "predict_views", "score_rows", "inverse_norms", "unit_into", "UNIT_BLOCK"]

#: Rows per float32 block of the head's inference and of the unit rows (the scores file's embeddings)
UNIT_BLOCK = 1024


def inverse_norms(b: Tensor) -> Tensor:
    """``1 / |row|`` of a float32 block (norms below 1e-12 count as 1e-12)."""
    return 1.0 / torch.linalg.vector_norm(b, dim=1).clamp_min(1e-12)


def unit_into(b: Tensor, inv: Tensor, out16: np.ndarray) -> None:
    """The unit rows ``b * inv`` (``b`` is overwritten) converted into the float16 array ``out16``.

    The scores file's ``embedding`` column and the frozen query's
    :class:`~hssal_ray.frozen.query_rows.StoreUnitRows` both come from here: the same float16 values.
    """
    torch.from_numpy(out16).copy_(b.mul_(inv[:, None]))


class _Forward:
    """The head's inference, folded: ``[L2Normalize] + Standardize + Linear`` as one product.

    ``W ((x / |x|) - mean) / std + b = (W / std) x / |x| + (b - (W / std) mean)``: one matrix
    product ``(W / std) @ x.T`` (a wide right-hand side: several times faster than ``x @ W.T``
    with a handful of classes) and the row norms, on blocks of :attr:`SUB` float32 rows that stay
    in the CPU cache, converted from float16 by torch. An ``mlp`` head folds its first layer and
    runs the rest as it is. The result equals the module's forward pass up to float32 rounding.
    """

    SUB = UNIT_BLOCK

    def __init__(self, head: nn.Module) -> None:
        mods = list(head)
        self.l2 = isinstance(mods[0], L2Normalize)
        std = mods[1 if self.l2 else 0]
        clf = mods[-1]
        first = clf if isinstance(clf, nn.Linear) else clf[0]
        self.rest = None if isinstance(clf, nn.Linear) else clf[1:]
        w = first.weight.detach().float() / std.std
        self.w = w.contiguous()
        self.b = first.bias.detach().float() - w @ std.mean
        self.buf: Tensor | None = None

    def __call__(self, x16: np.ndarray, emb: np.ndarray | None = None) -> Tensor:
        """Logits ``(m, C)`` of float16 rows ``x16``; ``emb`` (float16 ``(m, d)``) gets the unit rows."""
        m, d = x16.shape
        if self.buf is None or self.buf.shape[1] != d:
            self.buf = torch.empty((self.SUB, d), dtype=torch.float32)
        out = torch.empty((m, self.w.shape[0]), dtype=torch.float32)
        for s in range(0, m, self.SUB):
            e = min(m, s + self.SUB)
            b = self.buf[: e - s].copy_(torch.from_numpy(x16[s:e]))
            t = torch.mm(self.w, b.T).T
            if self.l2 or emb is not None:
                inv = inverse_norms(b)
                if self.l2:
                    t = t * inv[:, None]
                if emb is not None:  # the unit rows, converted into emb (no temporary copies)
                    unit_into(b, inv, emb[s:e])
            out[s:e] = t + self.b
        return out if self.rest is None else self.rest(out)


@torch.inference_mode()
def head_predict(head: nn.Module, feats: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Class probabilities ``(n, C)`` float32 of float16 features ``(n, d)`` (any float dtype works)."""
    from hssal_ray.frozen.store import RowReader

    head.eval()
    fwd = _Forward(head)
    n = len(feats)
    reader = RowReader(feats.shape[1], min(batch, n))
    out: np.ndarray | None = None
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        x16 = reader.read16(feats, rows) if feats.dtype == np.float16 else np.asarray(feats[rows], np.float16)
        p = torch.softmax(fwd(x16), 1).numpy()
        if out is None:
            out = np.empty((n, p.shape[1]), dtype=np.float32)
        out[s : s + len(p)] = p
    return out if out is not None else np.zeros((0, 0), np.float32)


@torch.inference_mode()
def predict_views(
    head: nn.Module, views: dict[str, np.ndarray], rows: np.ndarray, tta_views: int
) -> np.ndarray:
    """Probabilities of ``rows`` averaged over the clean view and the first ``tta_views`` weak views.

    Each view is read once, in blocks of rows (its pages dropped after each block).
    """
    from hssal_ray.frozen.store import SCAN_ROWS, RowReader

    head.eval()
    fwd = _Forward(head)
    rows = np.asarray(rows, dtype=np.int64)
    reader = RowReader(views["none"].shape[1], min(SCAN_ROWS, len(rows)))
    out: np.ndarray | None = None
    for v in ["none", *(f"weak_{i}" for i in range(tta_views))]:
        for s in range(0, len(rows), SCAN_ROWS):
            p = torch.softmax(fwd(reader.read16(views[v], rows[s : s + SCAN_ROWS])), 1).numpy()
            if out is None:
                out = np.zeros((len(rows), p.shape[1]), dtype=np.float32)
            out[s : s + len(p)] += p
    if out is None:
        return np.zeros((0, 0), np.float32)
    out /= 1 + tta_views
    return out


@torch.inference_mode()
def score_rows(
    head: nn.Module,
    views: dict[str, np.ndarray],
    rows: np.ndarray,
    tta_views: int,
    chunk: int = 16384,
    strong: bool = True,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray]]:
    """What the scores file needs of ``rows``, block by block: ``(start, probs, strong, embedding)``.

    ``probs`` are :func:`predict_views`'s, ``strong`` the probabilities of the ``strong_0`` view
    (None unless ``strong``), ``embedding`` the L2-normalised clean view (float16) of rows
    ``rows[start:start+len(probs)]``.
    """
    from hssal_ray.frozen.store import RowReader

    head.eval()
    fwd = _Forward(head)
    rows = np.asarray(rows, dtype=np.int64)
    reader = RowReader(views["none"].shape[1], min(chunk, len(rows)))
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        emb = np.empty((len(r), views["none"].shape[1]), dtype=np.float16)
        p = torch.softmax(fwd(reader.read16(views["none"], r), emb), 1)
        for i in range(tta_views):
            p += torch.softmax(fwd(reader.read16(views[f"weak_{i}"], r)), 1)
        p = (p / (1 + tta_views)).numpy()
        ps = torch.softmax(fwd(reader.read16(views["strong_0"], r)), 1).numpy() if strong else None
        yield s, p, ps, emb
