"""The ``train`` stage: fit the round's model, warm-started from the previous round's checkpoint.

Image-level fine-tuning runs Ray Train (:func:`hssal_ray.ssl.trainer.fit_round`); the frozen-encoder
path trains the head on cached features (:func:`hssal_ray.frozen.rounds.train`). Both write
``round_XXX/checkpoint/``; this stage adds ``round_XXX/train_metrics.json`` (the numeric training
figures and the stage's wall-clock start and end).
"""

from __future__ import annotations

import os
import time

from hssal_ray import _io
from hssal_ray.loop.context import RunContext
from hssal_ray.state import LabeledSet, RunState, round_dir

__all__ = ["run"]


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Train round ``state.round`` on the labeled set (and the unlabeled pool), then advance."""
    from hssal_ray.ssl.trainer import fit_round

    cfg = ctx.cfg
    labeled = LabeledSet.load(ctx.run_dir)
    r = state.round
    prev = round_dir(ctx.run_dir, r - 1) if r > 0 else None
    init_dir = _io.join(prev, "checkpoint") if (prev and cfg.ssl.warm_start) else None
    if init_dir is not None and init_dir and not _io.is_uri(init_dir):
        init_dir = os.path.abspath(init_dir)
    if cfg.ssl.finetune == "frozen":
        from hssal_ray.frozen import rounds

        metrics = rounds.train(ctx, r, init_dir)
    else:
        metrics = fit_round(
            cfg,
            root=ctx.catalog.root,
            kind=ctx.catalog.kind,
            labeled=ctx.labeled_rows(labeled),
            pool=ctx.pool_rows(labeled),
            num_classes=len(ctx.catalog.class_names),
            round_idx=r,
            run_dir=ctx.run_dir,
            init_dir=init_dir,
        ).metrics
    train_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    train_metrics["stage_started_at"] = time.time() - (time.perf_counter() - t0)
    train_metrics["stage_ended_at"] = time.time()
    _io.atomic_write_json(_io.join(round_dir(ctx.run_dir, r), "train_metrics.json"), train_metrics)
    state.advance(ctx.run_dir, "train", time.perf_counter() - t0)
