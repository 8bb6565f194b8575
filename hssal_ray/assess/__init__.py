"""Accuracy and area of a map from a stratified sample labeled by a person (``python -m hssal_ray.assess``).

:mod:`hssal_ray.assess.estimators` holds the math (plain numpy), :mod:`hssal_ray.assess.workflow`
the sample's hand-off and the estimate's files.
"""

from hssal_ray.assess.estimators import Estimates, allocate, draw, estimate
from hssal_ray.assess.workflow import draw_sample, estimate_accuracy, read_map

__all__ = ["Estimates", "allocate", "draw", "estimate", "draw_sample", "estimate_accuracy", "read_map"]
