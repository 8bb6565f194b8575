"""The EMA evaluation model: timm's ``ModelEmaV3`` with warm-up, and what it still holds of older weights.

Without warm-up an EMA with momentum ``m`` keeps ``m**s`` of its starting weights after ``s`` updates
(0.999**200 = 0.82): on rounds of a few hundred steps it scores far below the weights it averages.
timm's warm-up (``use_warmup=True``) uses ``decay(t) = min(m, 1 - (1 + t) ** -power)``, which is 0 at
the first update (the EMA starts as a copy of the model) and reaches ``m`` only after many steps. The
step ``t`` is the *global* step: it continues across warm-started rounds (see ``TrainState.step_offset``).
Buffers (BatchNorm statistics) are averaged like the parameters, so they match the averaged weights.
"""

from __future__ import annotations

import logging
import math

from torch import nn

from hssal_ray.errors import ConfigError
from hssal_ray.models import unwrap_model

__all__ = ["build_ema", "ema_decay", "ema_initial_weight"]

logger = logging.getLogger(__name__)


def build_ema(
    model: nn.Module, ema_m: float, *, warmup: bool = True, warmup_power: float = 2 / 3
) -> nn.Module:
    """A ``timm.utils.ModelEmaV3`` copy of ``model`` (DDP/compile wrappers removed), in eval mode.

    Call ``ema.update(model, step=global_step)`` after each optimiser step (``global_step`` 1-based).

    Raises:
        ConfigError: ``ema_m`` outside ``[0, 1)`` or a non-positive ``warmup_power``.
    """
    from timm.utils.model_ema import ModelEmaV3

    if not 0.0 <= ema_m < 1.0:
        raise ConfigError(f"ema_m must be in [0, 1), got {ema_m}")
    if warmup_power <= 0:
        raise ConfigError(f"ema warm-up power must be > 0, got {warmup_power}")
    ema = ModelEmaV3(unwrap_model(model), decay=ema_m, use_warmup=warmup, warmup_power=warmup_power)
    for p in ema.module.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay(step: int, ema_m: float, *, warmup: bool = True, warmup_power: float = 2 / 3) -> float:
    """The decay timm's ``ModelEmaV3.get_decay(step)`` uses at global step ``step`` (1-based)."""
    t = step - 1
    if t <= 0:
        return 0.0
    if not warmup:
        return ema_m
    return max(min(1.0 - (1.0 + t) ** -warmup_power, ema_m), 0.0)


def ema_initial_weight(
    start: int, end: int, ema_m: float, *, warmup: bool = True, warmup_power: float = 2 / 3
) -> float:
    """Weight the EMA still gives the weights it held at global step ``start`` after updates ``start+1..end``.

    ``prod(decay(t) for t in start+1..end)``: 0 once the first update of a run has copied the model; with
    ``warmup=False`` it is ``ema_m ** (end - start)``.
    """
    if end <= start:
        return 1.0
    if not warmup:
        return ema_m ** (end - start)
    log_w = 0.0
    for t in range(start + 1, end + 1):
        d = ema_decay(t, ema_m, warmup=True, warmup_power=warmup_power)
        if d <= 0.0:
            return 0.0
        log_w += math.log(d)
    return math.exp(log_w)
