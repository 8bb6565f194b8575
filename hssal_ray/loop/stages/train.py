"""The ``train`` stage: fit the round's model, warm-started from the previous round's checkpoint.

The run's learner trains (:meth:`hssal_ray.learners.base.Learner.train`: Ray Train fine-tuning on
images, or a head on the frozen encoder's stored features) and writes ``round_XXX/checkpoint/``;
this stage adds ``round_XXX/train_metrics.json`` (the numeric training
figures and the stage's wall-clock start and end).
"""

from __future__ import annotations

import os
import time

from hssal_ray import _io
from hssal_ray.loop.context import RunContext
from hssal_ray.state import RunState, round_dir

__all__ = ["run"]


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Train round ``state.round`` on the labeled set (and the unlabeled pool), then advance."""
    cfg = ctx.cfg
    r = state.round
    prev = round_dir(ctx.run_dir, r - 1) if r > 0 else None
    init_dir = _io.join(prev, "checkpoint") if (prev and cfg.ssl.warm_start) else None
    if init_dir is not None and init_dir and not _io.is_uri(init_dir):
        init_dir = os.path.abspath(init_dir)
    metrics = ctx.learner.train(r, init_dir)
    train_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    train_metrics["stage_started_at"] = time.time() - (time.perf_counter() - t0)
    train_metrics["stage_ended_at"] = time.time()
    _io.atomic_write_json(_io.join(round_dir(ctx.run_dir, r), "train_metrics.json"), train_metrics)
    state.advance(ctx.run_dir, "train", time.perf_counter() - t0)
