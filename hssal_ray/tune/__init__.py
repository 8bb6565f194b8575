"""Ray Tune sweeps over the whole closed loop: ``python -m hssal_ray.tune --config configs/sweep_demo.yaml``.

The search-space, naming and AUC helpers need no Ray; the sweep driver imports it lazily.
"""

from __future__ import annotations

from typing import Any

from hssal_ray.tune._space import learning_curve_auc, parse_search_space, trial_config, trial_name

__all__ = [
    "learning_curve_auc",
    "load_sweep_config",
    "parse_search_space",
    "plan_sweep",
    "run_sweep",
    "trial_config",
    "trial_name",
]


def __getattr__(name: str) -> Any:
    if name in ("load_sweep_config", "plan_sweep", "run_sweep"):
        from hssal_ray.tune import search

        return getattr(search, name)
    raise AttributeError(f"module 'hssal_ray.tune' has no attribute {name!r}")
