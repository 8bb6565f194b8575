"""A round's checkpoint: its files, writing it, reading its weights back and warm-starting from it.

Layout of ``round_XXX/checkpoint/`` (the same on both learners): ``model.safetensors`` (online
weights), ``ema.safetensors`` (EMA weights), ``train_state.pt`` (optimizer, scheduler, thresholds,
step: tensors and plain Python only, read back with ``torch.load(..., weights_only=True)``) and
``meta.json`` (``step``, ``global_step``, ``round``, the round's metrics; written last, so a
checkpoint with its meta is whole). Paths may be local or URIs (:mod:`hssal_ray._io`). No Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from hssal_ray import _io

__all__ = [
    "WEIGHT_FILES",
    "checkpoint_meta",
    "save_checkpoint_dir",
    "write_checkpoint",
    "copy_checkpoint_files",
    "load_weights",
    "warm_start_of",
    "apply_warm_start",
    "global_step_of",
    "round_ema_initial_weight",
]

WEIGHT_FILES = {"ema": "ema.safetensors", "online": "model.safetensors"}
"""Checkpoint file of each ``ssl.eval_model`` choice."""
META_FILE = "meta.json"


def checkpoint_meta(state: Any, round_idx: Any, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``meta.json`` of a checkpoint of ``state``: its step, the steps of every round so far, the round."""
    return {
        "step": state.step,
        "global_step": state.step_offset + state.step,
        "round": round_idx,
        **extra,
        "metrics": metrics,
    }


def save_checkpoint_dir(state: Any, path: str, meta: dict[str, Any]) -> None:
    """Write the model, EMA, optimizer state and ``meta`` of a ``TrainState`` into local ``path``."""
    from safetensors.torch import save_file

    from hssal_ray.models import unwrap_model

    os.makedirs(path, exist_ok=True)
    for which, module in (("online", unwrap_model(state.model)), ("ema", state.ema.module)):
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
            os.path.join(path, WEIGHT_FILES[which]),
        )
    torch.save(state.state_dict(include_models=False), os.path.join(path, "train_state.pt"))
    with open(os.path.join(path, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def copy_checkpoint_files(src: str, dest: str) -> None:
    """Copy the files of local checkpoint directory ``src`` into ``dest`` (local or URI), each
    atomically, ``meta.json`` last."""
    for name in sorted(os.listdir(src), key=lambda n: n == META_FILE):
        with open(os.path.join(src, name), "rb") as f:
            _io.atomic_write_bytes(_io.join(dest, name), f.read())


def write_checkpoint(state: Any, dest: str, meta: dict[str, Any]) -> None:
    """:func:`save_checkpoint_dir` to a local path or URI: written locally, then copied into ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint_dir(state, tmp, meta)
        copy_checkpoint_files(tmp, dest)


def load_weights(ckpt_dir: str, which: str = "ema") -> dict[str, torch.Tensor]:
    """The ``ema`` or ``online`` weights of a checkpoint directory (local path or URI)."""
    from safetensors.torch import load

    return load(_io.read_bytes(_io.join(ckpt_dir, WEIGHT_FILES[which])))


def global_step_of(ckpt_dir: str) -> int:
    """Optimiser steps of every round up to the checkpoint in ``ckpt_dir`` (``meta.json``; 0 if absent)."""
    p = _io.join(ckpt_dir, META_FILE)
    if not _io.exists(p):
        return 0
    meta = _io.read_json(p)
    return int(meta.get("global_step", meta.get("step", 0)))


def warm_start_of(init_dir: str) -> dict[str, Any]:
    """What a round warm-started from checkpoint ``init_dir`` takes: both weights and the global step."""
    return {
        "model": load_weights(init_dir, "online"),
        "ema": load_weights(init_dir, "ema"),
        "global_step": global_step_of(init_dir),
    }


def apply_warm_start(state: Any, init: dict[str, Any]) -> None:
    """Load a :func:`warm_start_of` (``model`` and ``ema`` weights, maybe ``global_step``) into ``state``.

    ``global_step`` becomes the state's step offset: the EMA's warm-up continues across rounds.
    Without it the offset is left as it is (a restart inside a round).
    """
    from hssal_ray.models import unwrap_model

    unwrap_model(state.model).load_state_dict(init["model"])
    state.ema.module.load_state_dict(init["ema"])
    if "global_step" in init:
        state.step_offset = int(init["global_step"])


def round_ema_initial_weight(cfg: Any, state: Any) -> float:
    """Weight the EMA still gives the weights it started this round with (a diagnostic in metrics.jsonl)."""
    from hssal_ray.ssl.ema import ema_initial_weight

    return ema_initial_weight(
        state.step_offset,
        state.step_offset + state.step,
        cfg.ssl.ema_m,
        warmup=cfg.ssl.ema_warmup,
        warmup_power=cfg.ssl.ema_warmup_power,
    )
