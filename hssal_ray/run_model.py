"""A run's evaluation model outside the loop: which round, the classifier, its input.

:func:`run_model` finds a run's trained round, :func:`eval_model` builds its evaluation classifier
exactly as the loop's scorer and frozen path do, :func:`decoder` is the loop's decode step with
the run's settings (bands, size, ``band_select``, ``value_range``, normalisation), usable without
Ray. :mod:`hssal_ray.export` and :mod:`hssal_ray.predict` are built on these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hssal_ray import _io
from hssal_ray.errors import HSSALError, StateError

__all__ = [
    "FrozenClassifier",
    "RunModel",
    "run_model",
    "trained_rounds",
    "eval_model",
    "preprocess_spec",
    "decoder",
    "run_images",
]

log = logging.getLogger(__name__)


class FrozenClassifier(nn.Module):
    """A frozen-encoder run's classifier: the encoder's pooled features through the trained head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_features_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features ``(B, d)`` and logits ``(B, num_classes)``."""
        emb = self.backbone(x)
        return emb, self.head(emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of normalised images ``(B, C, H, W)``."""
        return self.head(self.backbone(x))


@dataclass(frozen=True)
class RunModel:
    """Where a run's evaluation model is: config, classes, round and checkpoint."""

    run_dir: str
    cfg: Any
    classes: list[str]
    round: int
    ckpt_dir: str
    weights: str


def trained_rounds(run_dir: str, cfg: Any = None) -> list[int]:
    """The rounds of ``run_dir`` with a checkpoint of the evaluation model, in order."""
    from hssal_ray.loop.run_config import load_run_config
    from hssal_ray.rounds import WEIGHT_FILES
    from hssal_ray.state import round_dir

    cfg = cfg if cfg is not None else load_run_config(run_dir)
    rounds = sorted(
        int(n[len("round_") :])
        for n in _io.listdir(run_dir)
        if n.startswith("round_") and n[len("round_") :].isdigit()
    )
    weights = WEIGHT_FILES[cfg.ssl.eval_model]
    return [r for r in rounds if _io.exists(_io.join(round_dir(run_dir, r), "checkpoint", weights))]


def run_model(run_dir: str, round_idx: int | None = None) -> RunModel:
    """The evaluation model of ``run_dir``: the last round with a checkpoint, or ``round_idx``.

    Raises:
        StateError: Not a run directory, no classes, or no checkpoint (of that round).
    """
    from hssal_ray.loop.run_config import load_run_config
    from hssal_ray.rounds import WEIGHT_FILES
    from hssal_ray.state import round_dir

    cfg = load_run_config(run_dir)
    cpath = _io.join(run_dir, "classes.json")
    if not _io.exists(cpath):
        raise StateError(f"{run_dir} has no classes.json: the run has not scanned its data yet")
    classes = [str(c) for c in _io.read_json(cpath)]
    which = cfg.ssl.eval_model
    done = trained_rounds(run_dir, cfg)
    if round_idx is None:
        if not done:
            raise StateError(f"{run_dir} has no trained round yet (no round_XXX/checkpoint/)")
        round_idx = done[-1]
    elif round_idx not in done:
        have = ", ".join(map(str, done)) or "none"
        raise StateError(f"{run_dir} has no checkpoint of round {round_idx} (rounds with one: {have})")
    ckpt = _io.join(round_dir(run_dir, round_idx), "checkpoint")
    return RunModel(run_dir, cfg, classes, round_idx, ckpt, WEIGHT_FILES[which])


def eval_model(rm: RunModel) -> nn.Module:
    """The run's evaluation classifier in eval mode, built as the loop's learner builds it
    (:meth:`hssal_ray.learners.base.Learner.classifier`).

    Image-level runs: the classifier with the checkpoint's weights (as
    :class:`hssal_ray.scoring.Scorer` loads them). Frozen runs: the encoder of
    :class:`hssal_ray.frozen.encode.Encoder` (same weights, same seed) and the head with the
    checkpoint's weights (a :class:`FrozenClassifier`). It computes the clean view: the frozen
    path's scores match it to float16 rounding of the stored features when ``frozen.tta_views`` is 0
    (with more, the loop also averages stored augmented views).
    """
    from safetensors.torch import load

    from hssal_ray.learners import learner_class

    state = load(_io.read_bytes(_io.join(rm.ckpt_dir, rm.weights)))
    return learner_class(rm.cfg).classifier(rm.cfg, state, len(rm.classes))


def preprocess_spec(cfg: Any) -> dict[str, Any]:
    """How an image becomes the model's input (the ``input`` section of ``model.json``)."""
    from hssal_ray.data.transforms import default_mean_std
    from hssal_ray.packaged_weights import normalisation

    mean, std = normalisation(cfg)
    dm, ds = default_mean_std(cfg.data.bands)
    return {
        "size": cfg.data.image_size,
        "bands": cfg.data.bands,
        "band_select": cfg.data.band_select,
        "value_range": cfg.data.value_range,
        "scaling": "fixed range" if cfg.data.value_range else "per-image per-band 2-98 percentile stretch",
        "resize": "bilinear, antialiased (Pillow BILINEAR), band by band",
        "mean": list(mean if mean is not None else dm),
        "std": list(std if std is not None else ds),
        "layout": "NCHW float32: (uint8 / 255 - mean) / std",
    }


def decoder(cfg: Any, root: str, kind: str, bad_dir: str | None = None) -> Any:
    """The loop's decode step (:class:`hssal_ray.data.pipeline.DecodeAugment`, clean view only)
    with the run's settings: a plain callable on numpy batches of manifest rows."""
    from hssal_ray.data.pipeline import DecodeAugment, decode_settings

    return DecodeAugment(views=("none",), **decode_settings(cfg, root=root, kind=kind, bad_dir=bad_dir))


def run_images(rm: RunModel, n: int = 8) -> np.ndarray | None:
    """Up to ``n`` of the run's own images as the model sees them (the loop's
    decoder, in this process), or None when the run's data cannot be read here."""
    from hssal_ray.data.bootstrap import MANIFEST_FILE
    from hssal_ray.data.catalog import Catalog

    try:
        cat = Catalog.load(_io.join(rm.run_dir, MANIFEST_FILE))
        rows = cat.table.slice(0, 4 * n)
        decode = decoder(rm.cfg, cat.root, cat.kind)
        x = decode({c: rows.column(c).to_numpy(zero_copy_only=False) for c in rows.column_names})["x_none"]
    except (HSSALError, OSError) as e:
        log.info("the run's images cannot be read here (%s)", e)
        return None
    return x[:n] if len(x) else None
