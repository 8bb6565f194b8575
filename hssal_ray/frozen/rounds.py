"""The round's train, evaluate and score stages for ``ssl.finetune=frozen`` (the loop stages call these).

Every stage reads the run's embedding store (:mod:`hssal_ray.frozen.store`, encoded once) and writes
the same files as the image-level path: ``round_XXX/checkpoint/`` (the head's online and EMA weights),
``train_metrics.json``, ``scores.parquet`` (the scores contract, so every query strategy works
unchanged) and the metrics row. No Ray is needed after the encode.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray import _io
from hssal_ray.state import LabeledSet, round_dir

__all__ = ["store_of", "feature_pool", "train", "evaluate", "score"]

log = logging.getLogger(__name__)


def store_of(ctx: Any) -> Any:
    """The run's embedding store, encoded on first use and kept on the run context."""
    from hssal_ray.frozen.store import ensure_store

    store = ctx.embedding_store
    if store is None:
        from hssal_ray._ray import ensure_ray

        ensure_ray(ctx.cfg.resources)
        store = ensure_store(ctx.cfg, ctx.catalog, ctx.run_dir, progress=ctx.progress)
        ctx.embedding_store = store
    return store


def _rows(store: Any, table: pa.Table) -> np.ndarray:
    rows = store.rows_of(table.column("sample_id").to_pylist())
    return rows[~store.missing[rows]]


def _normalised(feats: np.ndarray) -> np.ndarray:
    f = feats.astype(np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def feature_pool(ctx: Any, table: pa.Table) -> Any:
    """A query :class:`~hssal_ray.query.Pool` of the rows of ``table`` with their clean features only."""
    from hssal_ray.query import Pool

    store = store_of(ctx)
    rows = _rows(store, table)
    return Pool(ids=store.ids[rows], embeddings=_normalised(store.views["none"][rows]).astype(np.float16))


def _load_head(cfg: Any, ckpt_dir: str, which: str, dim: int, num_classes: int) -> Any:
    from safetensors.torch import load

    from hssal_ray.frozen.head import build_head
    from hssal_ray.scoring import WEIGHT_FILES

    head = build_head(cfg, dim, num_classes)
    head.load_state_dict(load(_io.read_bytes(_io.join(ckpt_dir, WEIGHT_FILES[which]))))
    return head.eval()


def train(ctx: Any, r: int, init_dir: str | None) -> dict[str, Any]:
    """Train round ``r``'s head; writes ``round_XXX/checkpoint/``; returns the train metrics."""
    from safetensors.torch import load

    from hssal_ray.frozen.head import train_head
    from hssal_ray.ssl.train_loop import global_step_of, round_ema_initial_weight, write_checkpoint
    from hssal_ray.ssl.trainer import derive_seed, ssl_active

    cfg = ctx.cfg
    store = store_of(ctx)
    labeled = LabeledSet.load(ctx.run_dir)
    lab_table = ctx.labeled_rows(labeled)
    lab_rows = store.rows_of(lab_table.column("sample_id").to_pylist())
    labels = lab_table.column("label").to_numpy()
    pool = ctx.pool_rows(labeled)
    pool_rows = _rows(store, pool)
    keep = ~store.missing[store.rows_of(pool.column("sample_id").to_pylist())]
    truth = pool.column("label").to_numpy(zero_copy_only=False)[keep]
    init = None
    if init_dir is not None:
        init = {
            "model": load(_io.read_bytes(_io.join(init_dir, "model.safetensors"))),
            "ema": load(_io.read_bytes(_io.join(init_dir, "ema.safetensors"))),
            "global_step": global_step_of(init_dir),
        }
    state, metrics = train_head(
        cfg,
        store.views,
        lab_rows,
        labels,
        pool_rows,
        truth,
        len(ctx.catalog.class_names),
        stats_rows=_rows(store, ctx.split("train")),
        seed=derive_seed(cfg.seed, r, "train"),
        init=init,
        ssl_on=ssl_active(cfg, len(pool_rows), r),
        progress=True,
    )
    metrics["ema_initial_weight"] = round_ema_initial_weight(cfg, state)
    meta = {"step": state.step, "global_step": state.step_offset + state.step, "round": r, "regime": "frozen"}
    write_checkpoint(state, _io.join(round_dir(ctx.run_dir, r), "checkpoint"), {**meta, "metrics": metrics})
    return metrics


def evaluate(ctx: Any, r: int) -> dict[str, Any]:
    """Test-split accuracy of the evaluation head (and of the other weights, as a diagnostic)."""
    from hssal_ray.frozen.head import predict_views
    from hssal_ray.scoring import classification_metrics

    cfg = ctx.cfg
    store = store_of(ctx)
    test = ctx.split(cfg.data.eval_split)
    rows = store.rows_of(test.column("sample_id").to_pylist())
    y = test.column("label").to_numpy(zero_copy_only=False)
    ok = ~store.missing[rows]
    tta = cfg.ssl.tta_views
    ckpt = _io.join(round_dir(ctx.run_dir, r), "checkpoint")
    nc = len(ctx.catalog.class_names)
    other = "online" if cfg.ssl.eval_model == "ema" else "ema"
    pred = predict_views(_load_head(cfg, ckpt, cfg.ssl.eval_model, store.dim, nc), store.views, rows[ok], tta)
    alt = predict_views(_load_head(cfg, ckpt, other, store.dim, nc), store.views, rows[ok], tta)
    pred, alt = pred.argmax(1), alt.argmax(1)
    return classification_metrics(y[ok], pred, nc, other=alt, eval_model=cfg.ssl.eval_model)


def score(ctx: Any, r: int, out_path: str) -> None:
    """Scores of the training split (pool and labeled set) with the evaluation head: ``scores.parquet``."""
    from hssal_ray.frozen.head import head_predict, predict_views
    from hssal_ray.scoring import scores_table

    cfg = ctx.cfg
    store = store_of(ctx)
    rows = _rows(store, ctx.scored_rows())
    head = _load_head(
        cfg,
        _io.join(round_dir(ctx.run_dir, r), "checkpoint"),
        cfg.ssl.eval_model,
        store.dim,
        len(ctx.catalog.class_names),
    )
    probs = predict_views(head, store.views, rows, cfg.ssl.tta_views)
    strong = head_predict(head, store.views["strong_0"][rows])
    table = scores_table(
        store.ids[rows], _normalised(store.views["none"][rows]), probs, strong, cfg.ssl.p_cutoff
    )
    if _io.exists(out_path):
        _io.remove(out_path)
    _io.atomic_write_parquet(out_path, table)
