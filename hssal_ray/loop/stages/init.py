"""The ``init`` stage: the cold-start batch ``cold_start/query.csv``, answered like a query.

:func:`hssal_ray.loop.cold_start.select_cold_start` picks ``loop.initial_labeled`` train rows
(``loop.cold_start``: random, typiclust or stratified); the label stage then asks the oracle, and
round 0 starts once the answers are in ``labeled.parquet``.
"""

from __future__ import annotations

from hssal_ray import _io
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.query_files import write_query
from hssal_ray.loop.stages import label
from hssal_ray.state import RunState

__all__ = ["run"]


def run(ctx: RunContext, state: RunState, t0: float) -> None:
    """Write the cold-start batch ``cold_start/query.csv`` (once), then label it."""
    from hssal_ray.loop.cold_start import select_cold_start

    d = _io.join(ctx.run_dir, "cold_start")
    if not _io.exists(_io.join(d, "query.csv")):
        ids = select_cold_start(ctx)
        write_query(d, ids, None, None)
    label.run(ctx, state, t0)
