"""Ray Train report times for :mod:`benchmarks.train_throughput` (imports Ray, so kept apart).

A public :class:`ray.train.UserCallback`, handed to the run through
:func:`hssal_ray.ssl.trainer.fit_round`'s ``callbacks``: Ray Train calls it on its controller after
every report, with the metrics of every worker.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray.train

__all__ = ["ReportTimer"]


class ReportTimer(ray.train.UserCallback):
    """Append ``{"t": wall time, "metrics": [per-worker metrics]}`` per report to the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Record the time and every worker's metrics of one report."""
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), "metrics": metrics}, default=float) + "\n")
