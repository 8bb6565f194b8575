"""The optimiser and learning-rate schedule of FixMatch/USB: SGD without decay on biases and norms,
linear warm-up then ``cos(7 pi k / (16 K))`` (``fixmatch``) or a cosine that reaches 0 (``cosine``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hssal_ray.errors import ConfigError
from hssal_ray.models import unwrap_model


def build_optimizer(
    model: nn.Module,
    lr: float = 0.03,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """SGD with weight decay on weights only: biases, norms (1-D) and timm's ``no_weight_decay()`` are exempt.

    Raises:
        ConfigError: Non-positive ``lr``, negative decay, or Nesterov without momentum.
    """
    if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1 or (nesterov and momentum == 0):
        raise ConfigError(
            f"bad SGD settings: lr={lr} momentum={momentum} weight_decay={weight_decay} "
            f"nesterov={nesterov} (Nesterov needs momentum > 0)"
        )
    plain = unwrap_model(model)
    skip_fn = getattr(plain, "no_weight_decay", None)
    skip = set(skip_fn()) if callable(skip_fn) else set()
    decay, no_decay = [], []
    for name, p in plain.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


class FixMatchCosine:
    """LR factor of FixMatch/USB: linear warm-up from 0, then ``cos(7 pi k / (16 K))`` over the rest.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` stores its settings as plain values.

    Args:
        total_steps: ``K``, the number of optimiser steps.
        warmup_steps: Linear warm-up steps.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, num_cycles: float = 7.0 / 16.0) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.num_cycles = num_cycles

    def __call__(self, step: int) -> float:
        """Factor of the peak learning rate at optimiser step ``step``."""
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, math.cos(math.pi * self.num_cycles * progress))


#: ``num_cycles`` of each schedule: FixMatch/USB stop at ``cos(7 pi / 16)`` = 0.2 of the peak rate
#: (one run of ~1M steps); ``cosine`` ends at 0, so each short round's last steps settle the weights
#: and the EMA converges to them (measured on the demo: benchmarks/NOTES.md).
SCHEDULES = {"fixmatch": 7.0 / 16.0, "cosine": 0.5}


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine schedule (:class:`FixMatchCosine`) named by ``schedule`` (see :data:`SCHEDULES`);
    call ``step()`` after each optimiser step.

    Raises:
        ConfigError: ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]`` or an
            unknown ``schedule``.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, FixMatchCosine(total_steps, warmup_steps, SCHEDULES[schedule])
    )
