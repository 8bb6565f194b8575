"""The round's plumbing that both learners share, with no Ray in it.

* :mod:`~hssal_ray.rounds.policy`: seeds (:func:`derive_seed`), whether SSL is on
  (:func:`ssl_active`), the one autocast rule (:func:`amp_dtype`), the optimiser and schedule
  (:func:`build_optimization`) and whether a strong view is scored (:func:`scores_strong_view`);
* :mod:`~hssal_ray.rounds.checkpoint`: the checkpoint's files (:data:`WEIGHT_FILES`), writing it,
  reading its weights, warm-starting from it;
* :mod:`~hssal_ray.rounds.metrics`: per-step metric means and the evaluation's accuracies;
* :mod:`~hssal_ray.rounds.scores`: the rows of ``scores.parquet`` (:func:`scores_table`).

It may import :mod:`hssal_ray.config`, :mod:`hssal_ray.models`, :mod:`hssal_ray.ssl` (the plain
torch pieces), :mod:`hssal_ray.query` (the scores contract) and :mod:`hssal_ray._io`; never Ray or
the learners.
"""

from __future__ import annotations

from hssal_ray.rounds.checkpoint import (
    WEIGHT_FILES,
    apply_warm_start,
    checkpoint_meta,
    copy_checkpoint_files,
    global_step_of,
    load_weights,
    round_ema_initial_weight,
    save_checkpoint_dir,
    warm_start_of,
    write_checkpoint,
)
from hssal_ray.rounds.metrics import MetricMeans, classification_metrics
from hssal_ray.rounds.policy import (
    amp_dtype,
    build_optimization,
    derive_seed,
    pool_sample_rows,
    scores_committee,
    scores_strong_view,
    ssl_active,
)
from hssal_ray.rounds.scores import empty_scores_table, scores_table

__all__ = [
    "WEIGHT_FILES",
    "MetricMeans",
    "amp_dtype",
    "apply_warm_start",
    "build_optimization",
    "checkpoint_meta",
    "classification_metrics",
    "copy_checkpoint_files",
    "derive_seed",
    "empty_scores_table",
    "global_step_of",
    "load_weights",
    "pool_sample_rows",
    "round_ema_initial_weight",
    "save_checkpoint_dir",
    "scores_strong_view",
    "scores_committee",
    "scores_table",
    "ssl_active",
    "warm_start_of",
    "write_checkpoint",
]
