"""Accuracy and area of a map from a stratified sample labeled by a person (``python -m hssal_ray.assess``).

:mod:`hssal_ray.assess.estimators` and :mod:`~hssal_ray.assess.planning` hold the math (plain numpy);
:mod:`~hssal_ray.assess.maptable` reads a prediction folder as a map, :mod:`~hssal_ray.assess.handoff`
hands the sample to a person (files or Label Studio), :mod:`~hssal_ray.assess.workflow` draws the
sample, plans its size and writes the estimate's files.
"""

from hssal_ray.assess.estimators import Estimates, allocate, draw, estimate
from hssal_ray.assess.workflow import draw_sample, estimate_accuracy, read_map

__all__ = ["Estimates", "allocate", "draw", "estimate", "draw_sample", "estimate_accuracy", "read_map"]
