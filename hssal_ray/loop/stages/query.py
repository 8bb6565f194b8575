"""The ``query`` stage: select the round's batch from its scores and write ``round_XXX/query.csv``.

The batch size is ``query.budget``, capped by what is left of ``loop.total_budget``; the selection
itself is :func:`hssal_ray.loop.query_batch.run_query` (labeled rows excluded).
"""

from __future__ import annotations

import time

from hssal_ray import _io
from hssal_ray.config import ExperimentConfig
from hssal_ray.config.loop import label_count
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.query_files import write_query
from hssal_ray.state import LabeledSet, RunState, round_dir

__all__ = ["run", "round_budget"]


def round_budget(cfg: ExperimentConfig, num_labeled: int, n_train: int) -> int:
    """This round's batch size: ``query.budget``, at most what ``loop.total_budget`` still allows
    (fractions of the training split resolved against its ``n_train`` rows)."""
    budget = label_count(cfg.query.budget, n_train)
    if cfg.loop.total_budget:
        budget = min(budget, label_count(cfg.loop.total_budget, n_train) - num_labeled)
    return budget


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Select and write round ``state.round``'s batch, then advance."""
    from hssal_ray.loop.query_batch import run_query

    r = state.round
    rd = round_dir(ctx.run_dir, r)
    labeled = LabeledSet.load(ctx.run_dir)
    budget = round_budget(ctx.cfg, len(labeled), ctx.split("train").num_rows)
    known = labeled.labels() if ctx.cfg.query.reads_classes() else set(labeled.ids)
    rows = ctx.learner.embedding_source()  # the frozen path reads them from its store
    ids, u, coarse, info = run_query(ctx.cfg, _io.join(rd, "scores.parquet"), budget, known, r, rows)
    write_query(rd, ids, u, coarse)
    secs = time.perf_counter() - t0
    ctx.update_metrics(r, {"wall_s.query": secs, **info})
    state.advance(ctx.run_dir, "query", secs)
