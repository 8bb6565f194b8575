"""The ``label`` stage: hand the pending batch to the oracle, add its answers to ``labeled.parquet``.

The pending batch is the round's ``query.csv`` (the cold start's for ``init``). When the oracle
has no answer yet (a person labels), the run records status ``awaiting_labels`` and returns;
``--labels FILE`` (:func:`import_labels`) or the oracle itself
(:attr:`~hssal_ray.oracle.Oracle.pulls_labels`) brings the answer on the next run.
"""

from __future__ import annotations

import time

from hssal_ray.errors import StateError
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.query_files import pending_query
from hssal_ray.state import LabeledSet, RunState

__all__ = ["run", "import_labels"]


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Collect the oracle's answer to the pending batch, or request it and await the labels."""
    d, ids, round_added = pending_query(ctx.run_dir, state)
    oracle = ctx.oracle
    answer = oracle.collect(d, ids)
    if answer is None:
        # the cold start is named by its directory, not "round 0" (round 0's batch comes next)
        handoff: dict[str, object] = {"run_dir": ctx.run_dir}
        if state.stage != "init":
            handoff["round"] = state.round
        oracle.request(d, ids, handoff)
        state.status = "awaiting_labels"
        state.save(ctx.run_dir)
        ctx.progress(f"[hssal] waiting for labels of {len(ids)} samples.\n{oracle.instructions(d)}")
        return
    if not answer.labels:
        raise StateError(f"the oracle answered none of the {len(ids)} queried samples in {d}")
    labeled = LabeledSet.load(ctx.run_dir).with_round(round_added, answer.labels, answer.source)
    labeled.save(ctx.run_dir)
    secs = time.perf_counter() - t0
    if state.stage == "init":
        state.advance(ctx.run_dir, "init", secs)
        ctx.progress(f"[hssal] cold start: {len(labeled)} labeled samples ({ctx.cfg.loop.cold_start})")
    else:
        ctx.update_metrics(state.round, {"wall_s.label": secs, "num_answered": answer.num_answered})
        state.advance(ctx.run_dir, "label", secs, next_round=True)


def import_labels(ctx: RunContext, state: RunState, labels_file: str) -> None:
    """Import a human label file (``--labels``) answering the pending batch; the run goes on.

    Raises:
        StateError: The run is not awaiting labels, or its oracle takes no label files.
        LabelFileError: The file is invalid (nothing was written).
    """
    if state.status != "awaiting_labels":
        raise StateError(
            f"run {ctx.run_dir} is not waiting for labels (status {state.status!r}, stage {state.stage!r})"
        )
    oracle = ctx.oracle
    if not oracle.accepts_label_files:
        raise StateError("--labels only applies to runs with oracle.kind=human or label_studio")
    d, ids, _ = pending_query(ctx.run_dir, state)
    oracle.import_labels(d, ids, labels_file)  # validates first; raises before writing anything
    state.status = "running"
    state.save(ctx.run_dir)
