"""The closed loop: ``python -m hssal_ray.loop``."""

from hssal_ray.loop.runner import LoopRunner, read_metrics, science_sha

__all__ = ["LoopRunner", "read_metrics", "science_sha"]
