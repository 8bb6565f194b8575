"""FixMatch on cached features: the head of a frozen encoder trained on stored weak/strong views (pure torch).

The same loss, thresholds, EMA and optimiser as image-level training (:func:`hssal_ray.ssl.steps.train_step`),
with the backbone's pooled features of the stored views as the inputs: a labeled batch uses one of
the weak views of each sample, an unlabeled batch pseudo-labels a weak view and trains on a strong
view of the same image. Features are L2-normalised (``frozen.feature_norm=l2``), then standardised with
the training split's clean-view statistics (kept in the head as buffers, so a checkpoint is
self-contained). Evaluation and scoring can average the head's probabilities over the clean view and
``frozen.tta_views`` stored weak views (test-time augmentation at no encoding cost; the inference is
:mod:`hssal_ray.frozen.infer`, its names importable from here).

Both were chosen on the UCM validation split (benchmarks/NOTES.md): L2 normalisation gains +3.2
points on 27 stratified labels, +0.7 on 108 and nothing on all 1,344; averaging 2 weak views adds
about +1.8 points at every budget.

Memory. The views may be memory-mapped (:mod:`hssal_ray.frozen.store`): a training batch reads
its rows from the one view each row drew (``pread`` from a store file), and predictions read the
rows in blocks (:class:`~hssal_ray.frozen.store.RowReader`), so nothing here copies a whole view.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hssal_ray.models import make_head

__all__ = [
    "L2Normalize",
    "Standardize",
    "build_head",
    "feature_stats",
    "graph_features",
    "train_head",
]

RELEASE_EVERY = 100
"""Training steps between drops of the mapped pages the batches touched (a bounded working set)."""

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


def build_head(
    cfg: Any,
    dim: int,
    num_classes: int,
    stats_features: Tensor | None = None,
    *,
    stats: tuple[Tensor, Tensor] | None = None,
) -> nn.Module:
    """[L2Normalize] + Standardize + the configured head (``ssl.head``).

    The standardisation statistics are ``stats`` (``(mean, std)`` of the normalised features, see
    :func:`feature_stats`), or those of ``stats_features`` (raw ``(n, dim)`` features); without
    either they are 0/1, to be loaded from a checkpoint.
    """
    norm: list[nn.Module] = [L2Normalize()] if cfg.frozen.feature_norm == "l2" else []
    mean, std = torch.zeros(dim), torch.ones(dim)
    if stats is not None:
        mean, std = stats
    elif stats_features is not None:
        x = nn.Sequential(*norm)(stats_features.float())
        mean, std = x.mean(0), x.std(0)
    head = nn.Sequential(
        *norm, Standardize(mean, std), make_head(dim, num_classes, cfg.ssl.head, cfg.ssl.head_hidden)
    )
    head.num_classes = num_classes  # type: ignore[assignment]
    return head


def feature_stats(cfg: Any, view: np.ndarray, rows: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` (float32, unbiased std) of the rows' features after ``frozen.feature_norm``.

    One pass in blocks: per-block sums of the float32 features and of their squares (matrix
    products), accumulated in float64 across blocks, whatever ``n``.
    """
    from hssal_ray.frozen.store import scan_rows

    rows = np.asarray(rows, dtype=np.int64)
    d = view.shape[1]
    count, s1, s2 = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    l2 = cfg.frozen.feature_norm == "l2"
    for _, x in scan_rows(view, rows):  # x: the reader's buffer, changed in place
        if l2:
            x.mul_((1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12))[:, None])
        ones = torch.ones(1, len(x))
        s1 += torch.mm(ones, x)[0].double()  # a block's sum in float32 (BLAS), the total in float64
        s2 += torch.mm(ones, x.mul_(x))[0].double()
        count += len(x)
    if count < 2:
        return (s1 / max(count, 1)).float(), torch.ones(d)
    mean = s1 / count
    var = (s2 - count * mean**2).clamp_min(0.0) / (count - 1)
    return mean.float(), var.sqrt().float()


def graph_features(
    cfg: Any, views: dict[str, np.ndarray], rows: np.ndarray, stats: tuple[Tensor, Tensor]
) -> Any:
    """The graph's features of store rows ``rows``, by position: unit rows of the standardised clean view.

    Returns a :data:`hssal_ray.frozen.knn_search.Features` callable (the head's normalisation and
    standardisation, then L2 normalisation, in float32).
    """
    from hssal_ray.frozen.store import scan_rows

    prefix = build_head(cfg, views["none"].shape[1], 1, stats=stats)[:-1].eval()
    rows = np.asarray(rows, dtype=np.int64)

    @torch.inference_mode()
    def feats(pos: np.ndarray) -> np.ndarray:
        out = np.empty((len(pos), views["none"].shape[1]), dtype=np.float32)
        for s, x in scan_rows(views["none"], rows[np.asarray(pos)]):
            z = torch.nn.functional.normalize(prefix(x), dim=1, eps=1e-12)
            out[s : s + len(z)] = z.numpy()
        return out

    return feats


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
    stats: tuple[Tensor, Tensor] | None = None,
    graph: Any = None,
    committee_out: dict[str, np.ndarray] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Train the head for ``ssl.steps_per_round`` steps; returns the ``TrainState`` and mean metrics.

    With ``frozen.pseudo_labels=graph`` (and the unlabeled term on) a supervised teacher is trained
    first, for the same steps and from the same ``init``; the returned state is the student's.

    Args:
        cfg: The experiment config.
        views: The store's views (``none``, ``weak_k``, ``strong_k`` -> (n, d) fp16, maybe mapped).
        labeled_rows: Store rows of the labeled set; ``labels`` their oracle labels.
        labels: (L,) int labels.
        pool_rows: Store rows of the unlabeled pool.
        pool_truth: Ground truth of the pool rows (-1 unknown), only for the pseudo-label accuracy
            diagnostic; never used for training.
        num_classes: Classes.
        stats_rows: Rows whose clean features give the standardisation statistics.
        seed: Seeds the batches, view draws and the head's initialisation.
        init: A warm start: ``{"model": state_dict, "ema": state_dict, "global_step": int}``.
        ssl_on: Train the unlabeled term (see :func:`hssal_ray.rounds.ssl_active`).
        progress: Show a tqdm bar.
        stats: The statistics of ``stats_rows`` when already known (:func:`feature_stats`, which
            is otherwise run once here).
        graph: A :class:`~hssal_ray.frozen.graph.KnnGraph` whose nodes hold the labeled and pool
            rows (the run's graph of the training split); None builds one of those rows here.
        committee_out: A dict that receives, when the graph pseudo-labels are used, the pool's
            other committee members (``query.uncertainty=committee``): ``rows`` (the pool rows),
            ``teacher`` (the teacher's probabilities) and ``graph`` (the smoothed pseudo-labels),
            ``(len(rows), C)`` float32, row-aligned.
    """
    graph_mode = ssl_on and cfg.frozen.pseudo_labels == "graph"
    if stats is None and (init is None or graph_mode):
        stats = feature_stats(cfg, views["none"], stats_rows)
    data = _HeadData(
        cfg=cfg,
        views=views,
        labeled_rows=np.asarray(labeled_rows, dtype=np.int64),
        labels=np.asarray(labels),
        pool_rows=np.asarray(pool_rows, dtype=np.int64),
        truth=None if pool_truth is None else np.asarray(pool_truth),
        num_classes=num_classes,
        stats=stats,
        seed=seed,
        init=init,
        progress=progress,
    )
    if graph_mode:
        return _fit_with_graph(data, graph, committee_out)
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
    stats: tuple[Tensor, Tensor] | None
    seed: int
    init: dict[str, Any] | None
    progress: bool


def _fit_with_graph(
    data: _HeadData, graph: Any, committee_out: dict[str, np.ndarray] | None = None
) -> tuple[Any, dict[str, float]]:
    """Teacher (supervised), graph-smoothed pseudo-labels of the pool, then the student (FixMatch).

    ``committee_out`` (when given) receives the pool's teacher probabilities and smoothed labels.
    """
    from hssal_ray.frozen.graph import balance_classes, build_graph
    from hssal_ray.frozen.infer import predict_views

    s, f = data.cfg.ssl, data.cfg.frozen
    assert data.stats is not None  # train_head computes them for the graph
    teacher, tmetrics = _fit(data, s, False, desc="train teacher")
    t_head = teacher.ema.module if s.eval_model == "ema" and teacher.ema is not None else teacher.model
    if graph is None:  # the graph of this round's rows, in the order labeled + pool
        nodes = np.concatenate([data.labeled_rows, data.pool_rows])
        feats = graph_features(data.cfg, data.views, nodes, data.stats)
        graph = build_graph(feats, nodes, f.graph_k, max_exact=f.graph_max_nodes, seed=data.seed)
    lab_pos = graph.positions(data.labeled_rows)
    pool_pos = graph.positions(data.pool_rows)
    prior = predict_views(t_head, data.views, graph.rows, f.tta_views)  # every node, store order
    t_pool = prior[pool_pos]
    prior[lab_pos] = 0.0
    prior[lab_pos, data.labels] = 1.0
    members = np.concatenate([lab_pos, pool_pos])
    nodes_in = None if len(members) == len(graph) else np.sort(members)
    smoothed = graph.smooth(prior, f.graph_alpha, nodes=nodes_in)[pool_pos]
    del prior
    if f.graph_balance == "uniform":
        smoothed = balance_classes(smoothed, np.ones(data.num_classes))
    if committee_out is not None:
        committee_out.update(rows=data.pool_rows, teacher=t_pool, graph=smoothed)
    state, metrics = _fit(data, dataclasses.replace(s, p_cutoff=f.graph_cutoff), True, targets=smoothed)
    metrics["teacher_sup_loss"] = tmetrics.get("sup_loss", float("nan"))
    metrics["graph_pool_rows"] = float(len(data.pool_rows))
    metrics["graph_nodes"] = float(len(members))
    metrics["graph_recall"] = float(graph.recall)
    truth = data.truth
    if truth is not None and (truth >= 0).any():
        known = truth >= 0
        metrics["teacher_label_acc"] = float((t_pool.argmax(1) == truth)[known].mean())
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

    from hssal_ray.frozen.store import file_backed, release
    from hssal_ray.rounds import MetricMeans, apply_warm_start, build_optimization
    from hssal_ray.ssl.steps import TrainState, train_step

    cfg, views, seed, init = data.cfg, data.views, data.seed, data.init
    labeled_rows, pool_rows, truth = data.labeled_rows, data.pool_rows, data.truth
    torch.manual_seed(seed % (2**31))
    rng = np.random.default_rng(seed)
    k = cfg.frozen.embed_views
    weak = [views[f"weak_{i}"] for i in range(k)]
    strong = [views[f"strong_{i}"] for i in range(k)]
    head = build_head(cfg, views["none"].shape[1], data.num_classes, stats=data.stats)
    steps = cfg.ssl.steps_per_round
    optimizer, scheduler = build_optimization(cfg, head, steps)
    state = TrainState.create(head, optimizer, scheduler, ssl_cfg, num_classes=data.num_classes)
    if init is not None:
        apply_warm_start(state, {"global_step": 0, **init})
    bs, ub = cfg.ssl.batch_size, cfg.ssl.batch_size * cfg.ssl.uratio
    y_all = torch.tensor(data.labels, dtype=torch.long)
    y_pool = None if truth is None else torch.tensor(truth, dtype=torch.long)
    t_pool = None if targets is None else torch.from_numpy(np.asarray(targets, dtype=np.float32))
    means = MetricMeans()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=None if data.progress else True, leave=False)
    mapped = [v for v in (*weak, *strong) if not file_backed(v)]  # indexed in place: pages to drop
    fds: dict[str, int] = {}
    try:
        for step in bar:
            li = rng.integers(0, len(labeled_rows), size=bs)
            x_l = _rows(weak, rng.integers(0, k, size=bs), labeled_rows[li], fds)
            batch_l = {"x": x_l, "y": y_all[li]}
            batch_u = None
            if ssl_on:
                ui = rng.integers(0, len(pool_rows), size=ub)
                rows = pool_rows[ui]
                batch_u = {
                    "x_weak": _rows(weak, rng.integers(0, k, size=ub), rows, fds),
                    "x_strong": _rows(strong, rng.integers(0, k, size=ub), rows, fds),
                }
                if y_pool is not None:
                    batch_u["y"] = y_pool[ui]
                if t_pool is not None:
                    batch_u["targets"] = t_pool[ui]
            m = train_step(state, batch_l, batch_u, ssl_cfg, "cpu")
            means.add(m)
            if (step + 1) % RELEASE_EVERY == 0 or step + 1 == steps:
                for v in mapped:
                    release(v)
    finally:
        for fd in fds.values():
            os.close(fd)
    metrics = means.means()
    metrics.update(step=float(state.step), global_step=float(state.step_offset + state.step))
    return state, metrics


def _rows(views: list[np.ndarray], which: np.ndarray, rows: np.ndarray, fds: dict[str, int]) -> Tensor:
    """Row ``rows[i]`` of view ``views[which[i]]`` for every ``i`` (float32), one read per view.

    A view that maps a store file is read with ``pread`` (:func:`~hssal_ray.frozen.store.read_rows`,
    files kept open in ``fds``): its pages never enter the process. Another mapped view is indexed
    in place, and the caller drops the pages touched every :data:`RELEASE_EVERY` steps.
    """
    from hssal_ray.frozen.store import read_rows

    out = np.empty((len(rows), views[0].shape[1]), dtype=np.float16)
    for v in np.unique(which):
        sel = np.flatnonzero(which == v)
        out[sel] = read_rows(views[int(v)], rows[sel], fds=fds)
    return torch.from_numpy(out).float()


def __getattr__(name: str) -> Any:
    """The head's inference (:mod:`hssal_ray.frozen.infer`), importable from here as well."""
    if name in ("head_predict", "predict_views", "score_rows"):
        from hssal_ray.frozen import infer

        return getattr(infer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
