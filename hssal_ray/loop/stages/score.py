"""The ``score`` stage: embeddings, probabilities and uncertainties of every train row but the bad ones.

The run's learner scores (:meth:`hssal_ray.learners.base.Learner.score`: a Ray Data actor pool over
images, or the head on the frozen encoder's stored features) and writes
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

    r = state.round
    ctx.learner.score(r, _io.join(round_dir(ctx.run_dir, r), "scores.parquet"))
    collect_bad_samples(ctx.run_dir)
    secs = time.perf_counter() - t0
    ctx.update_metrics(r, {"wall_s.score": secs})
    state.advance(ctx.run_dir, "score", secs)
