"""The stages of a round, one module each, in the order a round runs them.

Each module has one function ``run(ctx, state, t0)`` taking the run's
:class:`~hssal_ray.loop.context.RunContext`, the :class:`~hssal_ray.state.RunState` and the stage's
start time (``time.perf_counter()``). It writes its outputs atomically, then advances ``state.json``
(:meth:`RunState.advance`), so a rerun resumes at the first unfinished stage:

================  =============================================================================
``init``          :mod:`.init`: cold-start batch ``cold_start/query.csv``, then labeled like a
                  query (round 0 starts after)
``train``         :mod:`.train`: ``round_XXX/checkpoint/`` and ``train_metrics.json``
``evaluate``      :mod:`.evaluate`: the round's row of ``metrics.jsonl``; is it the last round?
``score``         :mod:`.score`: ``round_XXX/scores.parquet``
``query``         :mod:`.query`: ``round_XXX/query.csv``
``label``         :mod:`.label`: ``labeled.parquet`` += the answers; the next round starts
================  =============================================================================
"""

from hssal_ray.loop.stages import evaluate, init, label, query, score, train

__all__ = ["init", "train", "evaluate", "score", "query", "label"]
