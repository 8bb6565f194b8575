"""The ``score`` stage: embeddings, probabilities and uncertainties of every train row but the bad ones.

Image-level: a Ray Data actor pool (:func:`hssal_ray.scoring.score_pool`); frozen encoder: the head
on cached features (:func:`hssal_ray.frozen.rounds.score`). Either writes
``round_XXX/scores.parquet`` (the scores contract of :mod:`hssal_ray.query.scores_io`), which holds
the labeled rows too (:meth:`~hssal_ray.loop.context.RunContext.scored_rows`).
"""

from __future__ import annotations

import time

from hssal_ray import _io
from hssal_ray.loop.context import RunContext
from hssal_ray.state import RunState, round_dir

__all__ = ["run"]


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Score round ``state.round``'s rows with its checkpoint, then advance."""
    from hssal_ray.data.pipeline import collect_bad_samples
    from hssal_ray.scoring import score_pool

    cfg = ctx.cfg
    r = state.round
    rd = round_dir(ctx.run_dir, r)
    if cfg.ssl.finetune == "frozen":
        from hssal_ray.frozen import rounds

        rounds.score(ctx, r, _io.join(rd, "scores.parquet"))
    else:
        score_pool(
            cfg,
            ctx.scored_rows(),
            root=ctx.catalog.root,
            kind=ctx.catalog.kind,
            ckpt_dir=_io.join(rd, "checkpoint"),
            num_classes=len(ctx.catalog.class_names),
            run_dir=ctx.run_dir,
            out_path=_io.join(rd, "scores.parquet"),
        )
    collect_bad_samples(ctx.run_dir)
    secs = time.perf_counter() - t0
    ctx.update_metrics(r, {"wall_s.score": secs})
    state.advance(ctx.run_dir, "score", secs)
