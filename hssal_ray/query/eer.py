"""Expected error reduction on the pool's k-NN graph: HAL's ``eer`` pick (plain numpy/torch/scipy).

The frozen path spreads labels over the cosine k-NN graph of the samples (:mod:`hssal_ray.frozen.graph`,
``F <- alpha S F + (1 - alpha) Y0``), so a new label does not stop at its row: labeling row ``i``
with class ``y`` pulls every row ``u`` toward ``y`` by ``g_i[u]``, the column ``i`` of
``(I - alpha S)^-1`` scaled to 1 at ``i`` (label spreading's influence of ``i``'s prior). The gain
of querying ``i`` is the expected rise of the confidence (max class probability) of the unlabeled
rows it influences, with ``y`` drawn from the model's ``p_i``:

    gain_i = sum_y p_i(y) sum_u [max_c ((1 - g_iu) f_u + g_iu e_y)_c - max_c f_u]

(the 0/1-risk estimate of expected error reduction, Roy & McCallum 2001, on the harmonic-function
graph of Zhu, Lafferty & Ghahramani 2003, "Combining active learning and semi-supervised learning
using Gaussian fields and harmonic functions"). The ``u = i`` term is ``1 - max p_i``, the row's own
least-confidence; the others weigh it by how many uncertain neighbours its label would settle, and
count the neighbours a label of another class would unsettle. A row in a dense region of doubt
scores high; an isolated outlier or a row whose neighbours are already sure scores low.

Cost: a k-NN graph of the ``n`` context rows (``n^2 d``) and ``iters`` sparse products with an
``(n, m)`` block for ``m`` candidates. HAL builds one graph over the pool while the pool has at
most :data:`MAX_CONTEXT` rows and one per coarse cluster above that (each capped at
:data:`MAX_CONTEXT` rows: the candidates and a sample of the rest), so its cost stays linear in the
pool; the flat variant's single graph is capped the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["eer_gain", "context_rows", "MAX_CONTEXT", "GRAPH_K", "GRAPH_ALPHA"]

#: rows of one EER graph (above: the candidates plus a uniform sample of the other rows).
MAX_CONTEXT = 4096
#: neighbours per row and the spreading weight: the frozen path's graph defaults (``frozen.graph_k``,
#: ``frozen.graph_alpha`` of ``configs/ucm_cpu.yaml``), so the influence is the one its labels spread by.
GRAPH_K = 10
GRAPH_ALPHA = 0.8
#: spreading steps (as :func:`hssal_ray.frozen.graph.propagate`): ``alpha**30`` ~ 1e-3 of the series left.
ITERS = 30
#: rows per candidate the gain sums over: its most influenced ones (influence decays geometrically).
TOP_ROWS = 64


def context_rows(rows: np.ndarray, cand: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """The rows of one EER graph: every candidate, plus the other ``rows`` up to ``cap`` in all.

    Args:
        rows: (n,) candidate rows of the context (pool row indices, any order, unique).
        cand: (m,) the candidates, a subset of ``rows``.
        cap: the most rows the graph may hold (at least ``m``).
        rng: draws the sample of non-candidate rows when ``n > cap``.

    Returns:
        (<= cap,) int64 pool rows, ascending.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size <= cap:
        return np.sort(rows)
    rest = np.setdiff1d(rows, cand, assume_unique=False)
    take = max(0, cap - int(np.unique(cand).size))
    keep = rng.choice(rest, size=min(take, rest.size), replace=False) if take else rest[:0]
    return np.sort(np.concatenate([np.asarray(cand, dtype=np.int64), keep]))


def eer_gain(
    emb: np.ndarray,
    probs: np.ndarray,
    unlabeled: np.ndarray,
    cand: np.ndarray,
    *,
    k: int = GRAPH_K,
    alpha: float = GRAPH_ALPHA,
    iters: int = ITERS,
    top: int = TOP_ROWS,
) -> np.ndarray:
    """Expected confidence gain of labeling each candidate (see the module docstring).

    Args:
        emb: (n, d) embeddings of the context rows (any float dtype; L2-normalised here).
        probs: (n, C) the model's class probabilities of the same rows.
        unlabeled: (n,) bool, rows whose confidence counts (labeled rows are pinned already).
        cand: (m,) positions of the candidates in the context (unique).
        k: neighbours per row of the graph.
        alpha: spreading weight in ``(0, 1)``.
        iters: spreading steps.
        top: per candidate, the most influenced rows the gain sums over.

    Returns:
        (m,) float64 gains; larger = a better query.
    """
    import torch

    from hssal_ray.frozen.graph import knn_affinity, torch_csr

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    cand = np.asarray(cand, dtype=np.int64)
    n, m = int(len(emb)), int(cand.size)
    if m == 0:
        return np.zeros(0, dtype=np.float64)
    if np.unique(cand).size != m or cand.min() < 0 or cand.max() >= n:
        raise ValueError(f"cand must be {m} unique positions in [0, {n})")
    f = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    if f.shape[0] != n or len(unlabeled) != n:
        raise ValueError(f"{n} embeddings, {f.shape[0]} probability rows, {len(unlabeled)} flags")
    cols = torch.arange(m)
    seed = torch.zeros(n, m)
    seed[torch.from_numpy(cand), cols] = 1.0
    if n > 1:  # X = sum_t (alpha S)^t E: the candidates' columns of (I - alpha S)^-1
        S = torch_csr(knn_affinity(np.asarray(emb), min(k, n - 1)))
        x, buf = seed.clone(), torch.empty_like(seed)
        for _ in range(iters):
            torch.mm(S, x, out=buf)
            buf.mul_(alpha).add_(seed)
            x, buf = buf, x
    else:
        x = seed
    g = (x / x[torch.from_numpy(cand), cols].clamp_min(1e-12)).clamp_(0.0, 1.0).T  # (m, n), 1 at i
    g[:, ~torch.from_numpy(np.asarray(unlabeled, dtype=bool))] = 0.0  # labeled rows are pinned
    t = min(top, n)
    gv, gi = torch.topk(g, t, dim=1)  # (m, t) the most influenced rows of each candidate
    fn = f[gi]  # (m, t, C)
    c = f.shape[1]
    top2 = torch.topk(fn, min(2, c), dim=2)
    m1, a1 = top2.values[..., 0], top2.indices[..., 0]
    m2 = top2.values[..., 1] if c > 1 else torch.zeros_like(m1)
    # max over classes of (1 - g) f_u + g e_y, for every y at once: the largest other class
    # (second max where y is the argmax) shrunk by (1 - g), or class y's own probability raised.
    others = torch.where(a1[..., None] == torch.arange(c), m2[..., None], m1[..., None])
    keep = (1.0 - gv)[..., None]
    new = torch.maximum(keep * others, keep * fn + gv[..., None])
    delta = ((new - m1[..., None]) * (gv > 0)[..., None]).sum(1)  # (m, C): rise for each label y
    gain = (delta * f[torch.from_numpy(cand)]).sum(1)
    return gain.double().numpy()
