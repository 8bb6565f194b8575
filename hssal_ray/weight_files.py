"""Loading a local weights file into a :class:`~hssal_ray.models.Classifier`: :func:`load_weights`.

The file (``.safetensors``, or a weights-only ``.pt``/``.pth``/``.bin``) may hold a full classifier
state dict or a backbone-only one in timm layout (e.g. DINOv2); input-channel counts and position
grids are adapted where timm can, and what did not fit is reported in :class:`WeightsLoadResult`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hssal_ray.errors import ConfigError

__all__ = ["WeightsLoadResult", "load_weights", "unwrap_model"]

logger = logging.getLogger(__name__)

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass
class WeightsLoadResult:
    """What :func:`load_weights` did.

    Attributes:
        matched: Number of backbone tensors loaded.
        missing: Model keys that got no tensor.
        unexpected: File keys that the model does not have.
        adapted: Keys whose input-channel dimension or position grid was adapted.
        dropped: File keys dropped because their shape did not fit (e.g. another head).
    """

    matched: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        elif path.endswith(_TORCH_SUFFIXES):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"unsupported weights file {path}: use .safetensors, .pt, .pth or .bin")
    except ConfigError:
        raise
    except Exception as err:  # corrupt files, pickles that are not weights-only, ...
        raise ConfigError(f"cannot read weights file {path}: {err}") from err
    for container in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a flat dict of tensors")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _timm_filter(backbone: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply timm's own checkpoint conversion (DINOv2 keys, position-embedding resampling) if there is one."""
    module = sys.modules.get(type(backbone).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None or not type(backbone).__module__.startswith("timm."):
        return state
    try:
        return dict(fn(dict(state), backbone))
    except Exception as err:  # timm's converters assume their own layouts
        logger.warning(
            "timm checkpoint conversion for %s failed (%s); loading keys as they are", type(backbone), err
        )
        return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> WeightsLoadResult:
    """Load a local weights file into a :class:`~hssal_ray.models.Classifier`, adapting what can be adapted.

    The file may hold a full classifier state dict (``backbone.*`` and ``head.*`` keys) or a
    backbone-only state dict in timm layout (e.g. DINOv2 ViT-S/14). Wrapper prefixes (``module.``,
    ``_orig_mod.``) are removed; timm's checkpoint converter for the architecture is applied
    (original DINOv2 keys, position-embedding grids of another ``img_size``); 4-D input convolutions
    with another channel count are adapted with ``timm.models.adapt_input_conv``; tensors with a
    shape that still does not fit (e.g. a head for other classes) are dropped. The rest is loaded
    with ``strict=False`` and the number of missing/unexpected keys is logged.

    Args:
        model: The classifier to load into (in place).
        path: ``.safetensors`` file, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``.

    Returns:
        What was matched, adapted, dropped, missing and unexpected.

    Raises:
        ConfigError: The file is missing, unreadable, not a dict of tensors, or no backbone key matched.
    """
    from timm.models import adapt_input_conv

    path = os.fspath(path)
    state = _read_state_dict(path)
    model = unwrap_model(model)
    full = any(k.startswith("backbone.") for k in state)
    backbone_state = (
        {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")} if full else state
    )
    head_state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")} if full else {}
    shapes_in_file = {k: v.shape for k, v in backbone_state.items()}
    backbone_state = _timm_filter(model.backbone, backbone_state)

    target = model.backbone.state_dict()
    result = WeightsLoadResult(matched=0)
    result.adapted = [
        k for k, v in backbone_state.items() if k in shapes_in_file and shapes_in_file[k] != v.shape
    ]
    kept: dict[str, Tensor] = {}
    for key, value in backbone_state.items():
        ref = target.get(key)
        if ref is None:
            result.unexpected.append(key)
            continue
        if (
            value.shape != ref.shape
            and value.ndim == 4 == ref.ndim
            and value.shape[0] == ref.shape[0]
            and value.shape[2:] == ref.shape[2:]
        ):
            try:
                src_chans = value.shape[1]
                value = adapt_input_conv(ref.shape[1], value, base_chans=src_chans)
                result.adapted.append(key)
                logger.info("adapted %s from %d to %d input channels", key, src_chans, ref.shape[1])
            except (NotImplementedError, ValueError) as err:
                logger.warning("cannot adapt %s to %d input channels: %s", key, ref.shape[1], err)
        if value.shape != ref.shape:
            result.dropped.append(key)
            continue
        kept[key] = value.to(ref.dtype)
    if not kept:
        raise ConfigError(
            f"no backbone tensor in {path} matches model {model.name!r} (file keys e.g. "
            f"{sorted(backbone_state)[:3]}, model keys e.g. {sorted(target)[:3]})"
        )
    missing, unexpected = model.backbone.load_state_dict(kept, strict=False)
    result.matched = len(kept)
    result.missing = list(missing)
    result.unexpected += list(unexpected)

    head_ref = model.head.state_dict()
    if head_state and all(k in head_ref and head_ref[k].shape == v.shape for k, v in head_state.items()):
        model.head.load_state_dict(head_state)
    elif head_state:
        result.dropped += [f"head.{k}" for k in head_state]
        logger.warning("dropped the head in %s: its shape does not fit %d classes", path, model.num_classes)
    logger.info(
        "loaded %s into %s: %d backbone tensors, %d missing, %d unexpected, %d adapted, %d dropped",
        path,
        model.name,
        result.matched,
        len(result.missing),
        len(result.unexpected),
        len(result.adapted),
        len(result.dropped),
    )
    return result
