"""The closed loop: ``python -m hssal_ray.loop``.

Read ``runner.py`` (the sequencing), ``context.py`` (what every stage shares) and ``stages/`` (one
module per stage) in that order; ``docs/ARCHITECTURE.md`` walks through one round.
"""

from hssal_ray.loop.runner import LoopRunner, read_metrics, science_sha

__all__ = ["LoopRunner", "read_metrics", "science_sha"]
