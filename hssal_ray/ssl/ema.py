"""Exponential moving average (EMA) of a model's weights, the evaluation model of FixMatch."""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from hssal_ray.errors import ConfigError, StateError
from hssal_ray.models import unwrap_model

__all__ = ["ModelEMA"]

logger = logging.getLogger(__name__)


class ModelEMA:
    """An EMA copy of a model: ``p_ema <- m * p_ema + (1 - m) * p`` for parameters; buffers are copied.

    The copy is taken from the plain module inside DDP / ``torch.compile`` wrappers, lives on the
    same device as the model, has ``requires_grad=False`` and stays in eval mode.

    Args:
        model: The online model (may be wrapped in DDP).
        ema_m: EMA momentum ``m`` in ``[0, 1)``.

    Attributes:
        module: The EMA model; use it for evaluation and scoring.
    """

    def __init__(self, model: nn.Module, ema_m: float = 0.999) -> None:
        if not 0.0 <= ema_m < 1.0:
            raise ConfigError(f"ema_m must be in [0, 1), got {ema_m}")
        self.ema_m = ema_m
        self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the online model's current weights into the EMA (call after each optimiser step).

        Raises:
            StateError: The model's parameters or buffers do not match the EMA copy's.
        """
        online = unwrap_model(model)
        ema_params = list(self.module.parameters())
        params = list(online.parameters())
        ema_buffers = list(self.module.buffers())
        buffers = list(online.buffers())
        if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
            raise StateError("ModelEMA.update got a model with another structure than the EMA copy")
        if self._is_float(ema_params):
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - self.ema_m)
        else:
            for e, p in zip(ema_params, params, strict=True):
                e.copy_(e * self.ema_m + p.detach() * (1.0 - self.ema_m))
        for e, b in zip(ema_buffers, buffers, strict=True):
            e.copy_(b)

    @staticmethod
    def _is_float(tensors: list[Tensor]) -> bool:
        return (
            all(t.is_floating_point() for t in tensors) and len({(t.device, t.dtype) for t in tensors}) <= 1
        )

    def state_dict(self) -> dict[str, Tensor]:
        """The EMA model's state dict (tensors only)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a state dict produced by :meth:`state_dict` (strict)."""
        self.module.load_state_dict(state)

    def to(self, device: torch.device | str) -> ModelEMA:
        """Move the EMA model to ``device``; returns ``self``."""
        self.module.to(device)
        return self
