"""Semi-supervised training: FixMatch loss and thresholds, EMA, and plain-torch training steps.

The Ray Train worker loop (:mod:`hssal_ray.ssl.train_loop`) and the trainer builder
(:mod:`hssal_ray.ssl.trainer`) import Ray; this package's re-exported pieces do not.
"""

from hssal_ray.ssl.ema import build_ema, ema_decay, ema_initial_weight
from hssal_ray.ssl.evaluation import evaluate, predict
from hssal_ray.ssl.fixmatch import (
    ClasswiseThresholds,
    DistributionAlignment,
    FlexMatchThresholds,
    FreeMatchThresholds,
    build_thresholds,
)
from hssal_ray.ssl.loss import FixMatchStats, fixmatch_loss
from hssal_ray.ssl.optim import FixMatchCosine, build_optimizer, build_scheduler
from hssal_ray.ssl.steps import TrainState, prepare_model, train_step

__all__ = [
    "ClasswiseThresholds",
    "DistributionAlignment",
    "FixMatchCosine",
    "FixMatchStats",
    "FlexMatchThresholds",
    "FreeMatchThresholds",
    "build_ema",
    "ema_decay",
    "ema_initial_weight",
    "TrainState",
    "build_optimizer",
    "build_scheduler",
    "build_thresholds",
    "evaluate",
    "fixmatch_loss",
    "predict",
    "prepare_model",
    "train_step",
]
