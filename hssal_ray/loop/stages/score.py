"""The ``score`` stage: embeddings, probabilities and uncertainties of every train row but the bad ones.

The run's learner scores (:meth:`hssal_ray.learners.base.Learner.score`: a Ray Data actor pool over
images, or the head on the frozen encoder's stored features) and writes
``round_XXX/scores.parquet`` (the scores contract of :mod:`hssal_ray.query.scores_io`), which holds
the labeled rows too (:meth:`~hssal_ray.loop.context.RunContext.scored_rows`).

Then it measures how far the round's predictions moved from the previous round's on the unlabeled
rows both scored (``stability_kappa``, ``stability_changed``, ``stability_rows`` in the round's
``metrics.jsonl`` row; :mod:`hssal_ray.rounds.stability`), and with ``loop.stop_kappa`` ends the run
here, before the next query, once the last ``loop.stop_window`` kappas average at least that.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from hssal_ray import _io
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.metrics import read_metrics
from hssal_ray.state import LabeledSet, RunState, round_dir

__all__ = ["run", "prediction_change"]

log = logging.getLogger(__name__)


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Score round ``state.round``'s rows with its checkpoint, measure the change, then advance or stop."""
    from hssal_ray.data.pipeline import collect_bad_samples
    from hssal_ray.loop.stages.evaluate import finish

    r = state.round
    path = _io.join(round_dir(ctx.run_dir, r), "scores.parquet")
    ctx.learner.score(r, path)
    collect_bad_samples(ctx.run_dir)
    moved = prediction_change(ctx.run_dir, r)
    secs = time.perf_counter() - t0
    ctx.update_metrics(r, {"wall_s.score": secs, **moved})
    loop = ctx.cfg.loop
    if loop.stop_kappa <= 0:
        state.advance(ctx.run_dir, "score", secs)
        return
    from hssal_ray.rounds.stability import kappas_of, settled

    mean = settled(kappas_of(read_metrics(ctx.run_dir)), loop.stop_kappa, loop.stop_window)
    if mean is not None:
        ctx.update_metrics(r, {"final": True, "stopped": "stable", "stability_window_kappa": mean})
    if ctx.on_round is not None:  # the evaluate stage left this round's report to the decision here
        ctx.on_round(read_metrics(ctx.run_dir))
    if mean is not None:
        finish(ctx, state, "score", secs)
    else:
        state.advance(ctx.run_dir, "score", secs)


def prediction_change(run_dir: str, r: int) -> dict[str, Any]:
    """Round ``r``'s predictions (its ``scores.parquet``) against round ``r - 1``'s on the unlabeled rows
    both scored, as ``metrics.jsonl`` fields; {} for round 0 or when the previous round's scores are gone
    (the run cannot stop on stability that round)."""
    from hssal_ray.rounds.stability import prediction_agreement, read_predictions

    if r < 1:
        return {}
    prev = _io.join(round_dir(run_dir, r - 1), "scores.parquet")
    if not _io.exists(prev):
        log.warning("round %d: no %s, so no stability measure this round", r, prev)
        return {}
    path = _io.join(round_dir(run_dir, r), "scores.parquet")
    labeled = LabeledSet.load(run_dir).ids
    moved = prediction_agreement(*read_predictions(prev), *read_predictions(path), labeled)
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in moved.items()}  # JSON
