"""FixMatch on cached features: the head of a frozen encoder trained on stored weak/strong views (pure torch).

The same loss, thresholds, EMA and optimiser as image-level training (:func:`hssal_ray.ssl.steps.train_step`),
with the backbone's pooled features of the stored views as the inputs: a labeled batch uses one of
the weak views of each sample, an unlabeled batch pseudo-labels a weak view and trains on a strong
view of the same image. Features are L2-normalised (``ssl.feature_norm=l2``), then standardised with
the training split's clean-view statistics (kept in the head as buffers, so a checkpoint is
self-contained). Evaluation and scoring can average the head's probabilities over the clean view and
``ssl.tta_views`` stored weak views (test-time augmentation at no encoding cost).

Both were chosen on the UCM validation split (benchmarks/NOTES.md): L2 normalisation gains +3.2
points on 27 stratified labels, +0.7 on 108 and nothing on all 1,344; averaging 2 weak views adds
about +1.8 points at every budget.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hssal_ray.models import make_head

__all__ = ["L2Normalize", "Standardize", "build_head", "train_head", "head_predict", "predict_views"]

log = logging.getLogger(__name__)


class L2Normalize(nn.Module):
    """Each feature vector divided by its L2 norm (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        """Unit-norm features ``(B, d)``."""
        return torch.nn.functional.normalize(x.float(), dim=1, eps=1e-12)


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed per-feature statistics (buffers)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clamp_min(1e-6).clone())

    def forward(self, x: Tensor) -> Tensor:
        """Standardised features ``(B, d)``."""
        return (x.float() - self.mean) / self.std


def build_head(cfg: Any, dim: int, num_classes: int, stats_features: Tensor | None = None) -> nn.Module:
    """[L2Normalize] + Standardize + the configured head (``ssl.head``).

    The standardisation statistics are those of ``stats_features`` (raw ``(n, dim)`` features, after
    the normalisation the head applies); without them they are 0/1, to be loaded from a checkpoint.
    """
    norm: list[nn.Module] = [L2Normalize()] if cfg.ssl.feature_norm == "l2" else []
    mean, std = torch.zeros(dim), torch.ones(dim)
    if stats_features is not None:
        x = nn.Sequential(*norm)(stats_features.float())
        mean, std = x.mean(0), x.std(0)
    head = nn.Sequential(
        *norm, Standardize(mean, std), make_head(dim, num_classes, cfg.ssl.head, cfg.ssl.head_hidden)
    )
    head.num_classes = num_classes  # type: ignore[assignment]
    return head


def train_head(
    cfg: Any,
    views: dict[str, np.ndarray],
    labeled_rows: np.ndarray,
    labels: np.ndarray,
    pool_rows: np.ndarray,
    pool_truth: np.ndarray | None,
    num_classes: int,
    *,
    stats_rows: np.ndarray,
    seed: int,
    init: dict[str, Any] | None = None,
    ssl_on: bool = True,
    progress: bool = False,
) -> tuple[Any, dict[str, float]]:
    """Train the head for ``ssl.steps_per_round`` steps; returns the ``TrainState`` and mean metrics.

    With ``ssl.pseudo_labels=graph`` (and the unlabeled term on) a supervised teacher is trained
    first, for the same steps and from the same ``init``; the returned state is the student's.

    Args:
        cfg: The experiment config.
        views: The store's views (``none``, ``weak_k``, ``strong_k`` -> (n, d) fp16).
        labeled_rows: Store rows of the labeled set; ``labels`` their oracle labels.
        labels: (L,) int labels.
        pool_rows: Store rows of the unlabeled pool.
        pool_truth: Ground truth of the pool rows (-1 unknown), only for the pseudo-label accuracy
            diagnostic; never used for training.
        num_classes: Classes.
        stats_rows: Rows whose clean features give the standardisation statistics.
        seed: Seeds the batches, view draws and the head's initialisation.
        init: A warm start: ``{"model": state_dict, "ema": state_dict, "global_step": int}``.
        ssl_on: Train the unlabeled term (see :func:`hssal_ray.ssl.trainer.ssl_active`).
        progress: Show a tqdm bar.
    """
    from hssal_ray.errors import ConfigError

    if cfg.ssl.embed_views < 1:
        raise ConfigError("ssl.finetune=frozen trains on stored augmented views: set ssl.embed_views >= 1")
    data = _HeadData(
        cfg=cfg,
        views=views,
        labeled_rows=np.asarray(labeled_rows),
        labels=np.asarray(labels),
        pool_rows=np.asarray(pool_rows),
        truth=None if pool_truth is None else np.asarray(pool_truth),
        num_classes=num_classes,
        stats_rows=stats_rows,
        seed=seed,
        init=init,
        progress=progress,
    )
    if ssl_on and cfg.ssl.pseudo_labels == "graph":
        return _fit_with_graph(data)
    return _fit(data, cfg.ssl, ssl_on)


@dataclass(frozen=True)
class _HeadData:
    """What every head trained in a round shares (:func:`train_head`'s arguments)."""

    cfg: Any
    views: dict[str, np.ndarray]
    labeled_rows: np.ndarray
    labels: np.ndarray
    pool_rows: np.ndarray
    truth: np.ndarray | None
    num_classes: int
    stats_rows: np.ndarray
    seed: int
    init: dict[str, Any] | None
    progress: bool


def _fit_with_graph(data: _HeadData) -> tuple[Any, dict[str, float]]:
    """Teacher (supervised), graph-smoothed pseudo-labels of the pool, then the student (FixMatch)."""
    from hssal_ray.frozen.graph import balance_classes, graph_pseudo_labels

    s = data.cfg.ssl
    n_pool, n_lab = len(data.pool_rows), len(data.labeled_rows)
    if n_pool > s.graph_max_nodes:
        pick = np.sort(
            np.random.default_rng([data.seed, 0x6A]).choice(n_pool, s.graph_max_nodes, replace=False)
        )
        truth = None if data.truth is None else data.truth[pick]
        data = dataclasses.replace(data, pool_rows=data.pool_rows[pick], truth=truth)
    teacher, tmetrics = _fit(data, s, False, desc="train teacher")
    t_head = teacher.ema.module if s.eval_model == "ema" and teacher.ema is not None else teacher.model
    nodes = np.concatenate([data.labeled_rows, data.pool_rows])
    with torch.inference_mode():
        t_head.eval()
        feats = t_head[:-1](torch.from_numpy(data.views["none"][nodes].astype(np.float32))).numpy()
    t_probs = predict_views(t_head, data.views, nodes, s.tta_views)
    flags = np.arange(len(nodes)) < n_lab
    lab = np.concatenate([data.labels, np.zeros(len(data.pool_rows), dtype=data.labels.dtype)])
    smoothed = graph_pseudo_labels(feats, t_probs, flags, lab, k=s.graph_k, alpha=s.graph_alpha)[n_lab:]
    if s.graph_balance == "uniform":
        smoothed = balance_classes(smoothed, np.ones(data.num_classes))
    state, metrics = _fit(data, dataclasses.replace(s, p_cutoff=s.graph_cutoff), True, targets=smoothed)
    metrics["teacher_sup_loss"] = tmetrics.get("sup_loss", float("nan"))
    metrics["graph_pool_rows"] = float(len(data.pool_rows))
    truth = data.truth
    if truth is not None and (truth >= 0).any():
        known = truth >= 0
        metrics["teacher_label_acc"] = float((t_probs[n_lab:].argmax(1) == truth)[known].mean())
        metrics["graph_label_acc"] = float((smoothed.argmax(1) == truth)[known].mean())
    return state, metrics


def _fit(
    data: _HeadData,
    ssl_cfg: Any,
    ssl_on: bool,
    *,
    targets: np.ndarray | None = None,
    desc: str = "train head",
) -> tuple[Any, dict[str, float]]:
    """One head trained for ``ssl.steps_per_round`` steps (``ssl_cfg``: the loss's settings)."""
    from tqdm.auto import tqdm

    from hssal_ray.ssl.steps import TrainState, train_step
    from hssal_ray.ssl.train_loop import build_optimization

    cfg, views, seed, init = data.cfg, data.views, data.seed, data.init
    labeled_rows, pool_rows, truth = data.labeled_rows, data.pool_rows, data.truth
    torch.manual_seed(seed % (2**31))
    rng = np.random.default_rng(seed)
    k = cfg.ssl.embed_views
    weak = np.stack([views[f"weak_{i}"] for i in range(k)])
    strong = np.stack([views[f"strong_{i}"] for i in range(k)])
    clean = torch.from_numpy(views["none"][data.stats_rows].astype(np.float32))
    head = build_head(cfg, clean.shape[1], data.num_classes, stats_features=clean)
    steps = cfg.ssl.steps_per_round
    optimizer, scheduler = build_optimization(cfg, head, steps)
    state = TrainState.create(head, optimizer, scheduler, ssl_cfg, num_classes=data.num_classes)
    if init is not None:
        head.load_state_dict(init["model"])
        state.ema.module.load_state_dict(init["ema"])
        state.step_offset = int(init.get("global_step", 0))
    bs, ub = cfg.ssl.batch_size, cfg.ssl.batch_size * cfg.ssl.uratio
    y_all = torch.tensor(data.labels, dtype=torch.long)
    y_pool = None if truth is None else torch.tensor(truth, dtype=torch.long)
    t_pool = None if targets is None else torch.from_numpy(np.asarray(targets, dtype=np.float32))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    bar = tqdm(range(steps), desc=desc, unit="step", disable=None if data.progress else True, leave=False)
    for _ in bar:
        li = rng.integers(0, len(labeled_rows), size=bs)
        batch_l = {"x": _rows(weak, rng.integers(0, k, size=bs), labeled_rows[li]), "y": y_all[li]}
        batch_u = None
        if ssl_on:
            ui = rng.integers(0, len(pool_rows), size=ub)
            rows = pool_rows[ui]
            batch_u = {
                "x_weak": _rows(weak, rng.integers(0, k, size=ub), rows),
                "x_strong": _rows(strong, rng.integers(0, k, size=ub), rows),
            }
            if y_pool is not None:
                batch_u["y"] = y_pool[ui]
            if t_pool is not None:
                batch_u["targets"] = t_pool[ui]
        m = train_step(state, batch_l, batch_u, ssl_cfg, "cpu")
        for key, v in m.items():
            if v == v:  # NaN: nothing to average (e.g. no pseudo-label kept)
                sums[key] = sums.get(key, 0.0) + float(v)
                counts[key] = counts.get(key, 0) + 1
    metrics = {key: sums[key] / counts[key] for key in sums}
    metrics.update(step=float(state.step), global_step=float(state.step_offset + state.step))
    return state, metrics


def _rows(views: np.ndarray, which: np.ndarray, rows: np.ndarray) -> Tensor:
    return torch.from_numpy(views[which, rows].astype(np.float32))


@torch.inference_mode()
def head_predict(head: nn.Module, feats: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Class probabilities ``(n, C)`` float32 of features ``(n, d)``."""
    head.eval()
    out = []
    for s in range(0, len(feats), batch):
        out.append(torch.softmax(head(torch.from_numpy(feats[s : s + batch].astype(np.float32))), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_views(
    head: nn.Module, views: dict[str, np.ndarray], rows: np.ndarray, tta_views: int
) -> np.ndarray:
    """Probabilities of ``rows`` averaged over the clean view and the first ``tta_views`` weak views."""
    probs = head_predict(head, views["none"][rows])
    for i in range(tta_views):
        probs = probs + head_predict(head, views[f"weak_{i}"][rows])
    return probs / (1 + tta_views)
