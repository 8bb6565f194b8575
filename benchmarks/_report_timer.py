"""Ray Train report times for :mod:`benchmarks.train_throughput`: Ray imports it by the name in an env var.

:func:`hssal_ray.ssl.trainer.fit_round` builds its own ``RunConfig`` and takes no callbacks, so a
public :class:`ray.train.UserCallback` cannot reach the run. Ray Train v2 also instantiates the
classes named in the ``RAY_TRAIN_CALLBACKS`` environment variable (``module.Class``), and those
must derive from its report hook ``ReportCallback`` (``ray.train.v2._internal``). This module is
that one class, kept apart so that importing the benchmark needs no Ray.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ray.train.v2._internal.execution.callback import ReportCallback

from benchmarks.train_throughput import REPORT_LOG_ENV

__all__ = ["ReportTimer"]


class ReportTimer(ReportCallback):
    """Append ``{"t": wall time, "metrics": [per-worker metrics]}`` to a JSON-lines file per report.

    The file path is read from ``$HSSAL_BENCH_REPORT_LOG`` when the callback is created (on the
    driver) and travels with it to the Ray Train controller.
    """

    def __init__(self) -> None:
        self.path = os.environ.get(REPORT_LOG_ENV)

    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        """Record the time and every worker's metrics of one report."""
        if not self.path:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), "metrics": metrics}, default=float) + "\n")
