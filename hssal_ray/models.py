"""Backbones and the classifier wrapper used by training, scoring and active learning.

A :class:`Classifier` is a timm backbone created with ``num_classes=0`` (so it returns pooled
features) plus a linear head. The pooled features are the embedding that active learning uses.
Any timm model name works; ``"hssal_small_cnn"`` selects :class:`SmallCNN`, a tiny CNN for tests
and CPU demos. ``in_chans`` is the number of input bands, so multispectral inputs (e.g. 13
Sentinel-2 bands) work with every backbone.

Weights come from scratch, from a local file (``.safetensors`` or a weights-only torch file with a
full :class:`Classifier` state dict or a backbone-only state dict in timm layout, e.g. DINOv2;
loaded by :mod:`hssal_ray.weight_files`), or from timm's hub (``pretrained_hub=True``, needs a
network). ``timm`` is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import Tensor, nn

from hssal_ray.errors import ConfigError
from hssal_ray.weight_files import WeightsLoadResult, load_weights, unwrap_model

__all__ = [
    "SMALL_CNN_NAME",
    "Classifier",
    "SmallCNN",
    "WeightsLoadResult",
    "build_model",
    "model_from_config",
    "set_finetune",
    "load_weights",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

SMALL_CNN_NAME = "hssal_small_cnn"


class SmallCNN(nn.Module):
    """Tiny CNN backbone (conv-bn-relu blocks, global average pool) with timm's backbone attributes.

    Args:
        in_chans: Number of input channels (bands).
        widths: Output channels of the blocks; every block after the first halves the resolution.
        drop_rate: Dropout applied to the pooled features.

    Shapes:
        ``forward``: ``(B, in_chans, H, W) -> (B, widths[-1])``.
    """

    def __init__(
        self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256), drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if in_chans < 1 or not widths or min(widths) < 1:
            raise ConfigError(f"SmallCNN needs in_chans >= 1 and positive widths, got {in_chans}, {widths}")
        blocks: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(widths):
            blocks += [
                nn.Conv2d(prev, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(drop_rate)
        self.in_chans = in_chans
        self.num_features = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, num_features)`` of images ``(B, C, H, W)``."""
        return self.drop(self.features(x).mean(dim=(2, 3)))


class Classifier(nn.Module):
    """A backbone returning pooled features followed by a linear head.

    Args:
        backbone: Module mapping ``(B, C, H, W)`` images to ``(B, embed_dim)`` pooled features.
        embed_dim: Size of the pooled features.
        num_classes: Number of output classes.
        name: Backbone name, kept for logs and checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed_dim: int,
        num_classes: int,
        name: str = "",
        head: str = "linear",
        head_hidden: int = 512,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.head = make_head(embed_dim, num_classes, head, head_hidden)
        self.frozen_prefixes: tuple[str, ...] = ()
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> Classifier:
        """Like ``nn.Module.train``, but frozen parts (:func:`set_finetune`) stay in eval mode."""
        super().train(mode)
        if mode and self.frozen_prefixes:
            dotted = tuple(p + "." for p in self.frozen_prefixes)
            for name, m in self.named_modules():
                if name in self.frozen_prefixes or name.startswith(dotted):
                    m.eval()
        return self

    def forward_features_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Embeddings ``(B, embed_dim)`` (pooled pre-head features) and logits ``(B, num_classes)``."""
        emb = self.backbone(x)
        return emb, self.head(emb)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (timm's convention, e.g. position embeddings) to exclude from weight decay."""
        fn = getattr(self.backbone, "no_weight_decay", None)
        names = fn() if callable(fn) else set()
        return {f"backbone.{n}" for n in names}


def make_head(embed_dim: int, num_classes: int, kind: str = "linear", hidden: int = 512) -> nn.Module:
    """The classifier head: ``linear`` or ``mlp`` (Linear-BatchNorm-ReLU-Linear, ``hidden`` wide)."""
    if kind == "linear":
        return nn.Linear(embed_dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
    raise ConfigError(f"unknown head {kind!r}: use linear or mlp")


def model_from_config(cfg: Any, num_classes: int, *, with_weights: bool = True) -> Classifier:
    """The run's classifier from ``cfg.ssl`` (backbone, weights, head, fine-tuning regime).

    ``with_weights=False`` skips loading pretrained weights (callers that load a checkpoint next).
    """
    model = build_model(
        cfg.ssl.model,
        num_classes,
        in_chans=cfg.data.bands,
        weights=cfg.ssl.weights if with_weights else None,
        pretrained_hub=cfg.ssl.pretrained_hub and with_weights,
        head=cfg.ssl.head,
        head_hidden=cfg.ssl.head_hidden,
        **cfg.ssl.model_kwargs,
    )
    return set_finetune(model, cfg.ssl.finetune, cfg.ssl.trainable_stages)


def _stage_prefixes(backbone: nn.Module) -> list[str]:
    info = getattr(backbone, "feature_info", None)
    names = [d["module"] for d in info] if isinstance(info, list) else []
    if not names:  # SmallCNN and timm models without feature_info: every top-level child is a stage
        names = [n for n, _ in backbone.named_children()]
    return names


def set_finetune(model: Classifier, regime: str, trainable_stages: int = 1) -> Classifier:
    """Apply a fine-tuning regime in place: ``full``, ``partial`` or ``frozen``.

    ``partial`` trains the last ``trainable_stages`` stages of the backbone (timm's ``feature_info``
    stages; everything after the last one, e.g. the final conv, too) and the head; the earlier layers
    get ``requires_grad=False`` and stay in eval mode (BatchNorm statistics fixed). ``frozen`` freezes the
    whole backbone. Returns the model.

    Raises:
        ConfigError: An unknown regime, or more stages than the backbone has.
    """
    if regime not in ("full", "partial", "frozen"):
        raise ConfigError(f"unknown ssl.finetune {regime!r}: use full, partial or frozen")
    for p in model.parameters():
        p.requires_grad_(True)
    frozen: list[str] = []
    if regime == "frozen":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        model.frozen_prefixes = ("backbone",)
        return model.train(model.training)
    if regime == "partial":
        stages = _stage_prefixes(model.backbone)
        if trainable_stages > len(stages):
            raise ConfigError(
                f"ssl.trainable_stages={trainable_stages} but {model.name} has "
                f"{len(stages)} stages ({stages})"
            )
        first = stages[-trainable_stages]
        for name in _leaves(model.backbone):
            if name == first or name.startswith(first + "."):
                break
            frozen.append(name)
        for p in model.backbone.parameters(recurse=False):  # e.g. a ViT's cls_token and pos_embed
            p.requires_grad_(False)
    for name in frozen:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad_(False)
    model.frozen_prefixes = tuple(f"backbone.{n}" for n in frozen)
    return model.train(model.training)


def _leaves(backbone: nn.Module) -> list[str]:
    """Names of the modules that hold parameters or buffers themselves, in registration order."""
    return [
        n
        for n, m in backbone.named_modules()
        if n
        and (
            next(m.parameters(recurse=False), None) is not None
            or next(m.buffers(recurse=False), None) is not None
        )
    ]


def build_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    weights: str | os.PathLike[str] | None = None,
    pretrained_hub: bool = False,
    drop_rate: float = 0.0,
    head: str = "linear",
    head_hidden: int = 512,
    **timm_kwargs: Any,
) -> Classifier:
    """Build a :class:`Classifier` from a timm name (or ``"hssal_small_cnn"``).

    Args:
        name: timm model name (e.g. ``"resnet18"``, ``"vit_small_patch14_dinov2.lvd142m"``) or
            ``"hssal_small_cnn"``.
        num_classes: Number of classes of the linear head.
        in_chans: Number of input bands.
        weights: ``package:NAME`` (weights an installed package ships, see :mod:`hssal_ray.packaged_weights`)
            or a local weights file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``; see :func:`load_weights`).
        pretrained_hub: Load timm's hub weights (needs a network; never used in tests).
        drop_rate: Dropout before the head.
        head: ``linear`` or ``mlp`` (see :func:`make_head`).
        head_hidden: Hidden width of the ``mlp`` head.
        **timm_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``img_size=224``),
            or for :class:`SmallCNN` (``widths``).

    Returns:
        The classifier, in training mode, on the CPU.

    Raises:
        ConfigError: Unknown model name, bad keyword arguments, both ``weights`` and
            ``pretrained_hub``, or an unusable weights file.
    """
    if weights is not None and pretrained_hub:
        raise ConfigError("give either a local weights file or pretrained_hub=True, not both")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    backbone: nn.Module
    if name == SMALL_CNN_NAME:
        if pretrained_hub:
            raise ConfigError(f"{SMALL_CNN_NAME} has no hub weights")
        try:
            backbone = SmallCNN(in_chans=in_chans, drop_rate=drop_rate, **timm_kwargs)
        except TypeError as err:
            raise ConfigError(f"bad keyword arguments for {SMALL_CNN_NAME}: {err}") from err
        embed_dim = backbone.num_features
    else:
        import timm

        if not timm.is_model(name):
            raise ConfigError(
                f"unknown model {name!r}: use a timm name (timm.list_models()) or {SMALL_CNN_NAME!r}"
            )
        try:
            backbone = timm.create_model(
                name,
                pretrained=pretrained_hub,
                num_classes=0,
                in_chans=in_chans,
                drop_rate=drop_rate,
                **timm_kwargs,
            )
        except TypeError as err:
            raise ConfigError(f"bad keyword arguments for timm model {name!r}: {err}") from err
        embed_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    model = Classifier(backbone, embed_dim, num_classes, name=name, head=head, head_hidden=head_hidden)
    logger.info(
        "built %s: in_chans=%d embed_dim=%d classes=%d params=%.2fM",
        name,
        in_chans,
        embed_dim,
        num_classes,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    if weights is not None and str(weights).startswith("package:"):
        from hssal_ray.packaged_weights import packaged_backbone_state

        state = packaged_backbone_state(str(weights), name, in_chans)
        model.backbone.load_state_dict(state, strict=True)
        logger.info("loaded %s into %s: %d tensors", weights, name, len(state))
    elif weights is not None:
        load_weights(model, weights)
    return model
