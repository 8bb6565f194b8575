"""Putting batches on the device and bfloat16 autocast, shared by training and evaluation steps."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from hssal_ray.errors import ConfigError


def _autocast(
    device: torch.device, amp_dtype: torch.dtype | None, allow_cpu_amp: bool
) -> contextlib.AbstractContextManager[Any]:
    if amp_dtype is not None and amp_dtype != torch.bfloat16:
        raise ConfigError(f"only bfloat16 autocast is supported (no loss scaling), got {amp_dtype}")
    if amp_dtype is None or (device.type != "cuda" and not allow_cpu_amp):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _inputs(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
