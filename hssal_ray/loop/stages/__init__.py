"""The stages of a round, one module each, in the order a round runs them.

Each stage is a function ``stage(ctx, state, t0)`` taking the run's
:class:`~hssal_ray.loop.context.RunContext`, the :class:`~hssal_ray.state.RunState` and the stage's
start time (``time.perf_counter()``). It writes its outputs atomically, then advances ``state.json``
(:meth:`RunState.advance`), so a rerun resumes at the first unfinished stage:

================  ===============================  =============================================
``init``          :func:`label.init`               cold-start batch -> ``cold_start/query.csv``,
                                                   answered like a query (round 0 starts after)
``train``         :func:`train.train`              ``round_XXX/checkpoint/``, ``train_metrics.json``
``evaluate``      :func:`evaluate.evaluate`        the round's row of ``metrics.jsonl``; last round?
``score``         :func:`score.score`              ``round_XXX/scores.parquet``
``query``         :func:`query.query`              ``round_XXX/query.csv``
``label``         :func:`label.label`              ``labeled.parquet`` += the answers; next round
================  ===============================  =============================================
"""

from hssal_ray.loop.stages.evaluate import evaluate, is_final_round
from hssal_ray.loop.stages.label import import_labels, init, label
from hssal_ray.loop.stages.query import query
from hssal_ray.loop.stages.score import score
from hssal_ray.loop.stages.train import train

__all__ = ["init", "train", "evaluate", "score", "query", "label", "import_labels", "is_final_round"]
