"""hssal_ray: closed-loop semi-supervised + hierarchical active learning for remote sensing, on Ray.

Entry points: ``python -m hssal_ray.loop`` (the loop), ``python -m hssal_ray.query`` (a query on a
scores file), ``python -m hssal_ray.report``, ``python -m hssal_ray.tune``,
``python -m hssal_ray.data.shard`` and ``python -m hssal_ray.data.download``.

The top-level names are imported lazily, so ``import hssal_ray`` stays cheap (no torch, no Ray).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ExperimentConfig": "hssal_ray.config",
    "load_config": "hssal_ray.config",
    "LoopRunner": "hssal_ray.loop.runner",
    "scan": "hssal_ray.data.catalog",
    "Catalog": "hssal_ray.data.catalog",
    "build_model": "hssal_ray.models",
    "fixmatch_loss": "hssal_ray.ssl.loss",
    "strategy_from_config": "hssal_ray.query",
    "load_pool": "hssal_ray.query",
    "build_report": "hssal_ray.report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hssal_ray' has no attribute {name!r}")
