"""Plain-torch training pieces that a (Ray Train) worker loop calls: optimiser, schedule, state, steps.

Batches are dicts of ready tensors:

* labeled ``batch_l = {"x": (B, C, H, W) float normalised, "y": (B,) long}``;
* unlabeled ``batch_u = {"x_weak": (B_u, C, H, W), "x_strong": (B_u, C, H, W)}`` plus optional
  ``"y": (B_u,) long`` ground truth (-1 = unknown, for pseudo-label accuracy) and ``"idx": (B_u,) long``
  (indices for FlexMatch's per-sample memory), and ``"targets": (B_u, C)`` a teacher's
  probabilities that replace the weak view's as pseudo-labels (the frozen head's graph mode).

``cfg`` is any object with USB's attribute names (``p_cutoff``, ``lambda_u``, ``T``, ``ema_m``,
``ema_warmup``, ``ema_warmup_power``, ``threshold_mode``, ``dist_align``), for example
:class:`hssal_ray.config.SSLConfig`; a missing one takes that class's default.
``TrainState.create`` reads ``ema_*``, ``threshold_mode``, ``p_cutoff`` and ``dist_align``.
Optimiser and schedule: :mod:`hssal_ray.ssl.optim`; evaluation: :mod:`hssal_ray.ssl.evaluation`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hssal_ray.config import SSLConfig
from hssal_ray.errors import ConfigError, HSSALError, StateError
from hssal_ray.models import unwrap_model
from hssal_ray.ssl._device import _autocast, _inputs
from hssal_ray.ssl.ema import build_ema
from hssal_ray.ssl.fixmatch import ClasswiseThresholds, DistributionAlignment, build_thresholds
from hssal_ray.ssl.loss import fixmatch_loss

__all__ = ["TrainState", "prepare_model", "train_step"]

logger = logging.getLogger(__name__)

_DEFAULTS = SSLConfig()  # the training math's defaults live in hssal_ray.config only


def _cfg(cfg: Any, name: str) -> Any:
    return getattr(cfg, name, getattr(_DEFAULTS, name))


def prepare_model(model: nn.Module, device: torch.device | str, *, channels_last: bool = False) -> nn.Module:
    """Move a model to ``device`` (and to channels_last memory format); do this before DDP wrapping."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@dataclass
class TrainState:
    """Everything one worker trains and checkpoints.

    Attributes:
        model: The online model (plain, compiled or DDP-wrapped).
        optimizer: Its optimiser.
        scheduler: LR scheduler stepped once per optimiser step, or None.
        ema: EMA of the model (timm ``ModelEmaV3``; the evaluation model), or None.
        step: Optimiser steps taken in this round.
        step_offset: Optimiser steps of earlier warm-started rounds: the EMA's warm-up step is
            ``step_offset + step``, so it continues across rounds.
        thresholds: Class-wise thresholds (FlexMatch/FreeMatch) or None for a fixed ``p_cutoff``.
        dist_align: Distribution alignment of the weak-view probabilities, or None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: nn.Module | None = None
    step: int = 0
    step_offset: int = 0
    thresholds: ClasswiseThresholds | None = None
    dist_align: DistributionAlignment | None = None

    @classmethod
    def create(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        cfg: Any = None,
        *,
        num_classes: int | None = None,
    ) -> TrainState:
        """A fresh state: adds the EMA, thresholds and alignment that ``cfg``'s USB-named fields ask for.

        Args:
            model: The online model, already on its device (DDP-wrap it before or after).
            optimizer: From :func:`~hssal_ray.ssl.optim.build_optimizer`.
            scheduler: From :func:`~hssal_ray.ssl.optim.build_scheduler`, or None.
            cfg: Config with ``ema_m``, ``threshold_mode``, ``p_cutoff``, ``dist_align`` (defaults if absent).
            num_classes: Number of classes; read from ``model.num_classes`` when None.

        Raises:
            ConfigError: No class count, or an unknown ``threshold_mode``.
        """
        num_classes = num_classes or int(getattr(unwrap_model(model), "num_classes", 0))
        if num_classes < 1:
            raise ConfigError("TrainState.create needs num_classes (the model has no num_classes attribute)")
        return cls(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            ema=build_ema(
                model,
                _cfg(cfg, "ema_m"),
                warmup=bool(_cfg(cfg, "ema_warmup")),
                warmup_power=float(_cfg(cfg, "ema_warmup_power")),
            ),
            thresholds=build_thresholds(_cfg(cfg, "threshold_mode"), num_classes, _cfg(cfg, "p_cutoff")),
            dist_align=DistributionAlignment(num_classes) if _cfg(cfg, "dist_align") else None,
        )

    def state_dict(self, *, include_models: bool = True) -> dict[str, Any]:
        """Nested dict of tensors and plain Python values only (no pickled objects).

        Keys: ``step`` (int), ``model`` and ``ema`` (state dicts, DDP prefix removed; left out when
        ``include_models`` is False, for callers that store the weights as safetensors themselves),
        ``optimizer``, ``scheduler``, ``thresholds`` (``{"kind", "state"}``) and ``dist_align``; absent
        parts are None. Tensors alias the live state: save them (``torch.save``, read back with
        ``torch.load(..., weights_only=True)``) before training on. The optimiser state has int keys,
        so a safetensors + JSON encoding must keep key types (plain JSON would turn them into strings).
        """
        out: dict[str, Any] = {
            "step": self.step,
            "step_offset": self.step_offset,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "thresholds": None
            if self.thresholds is None
            else {"kind": type(self.thresholds).__name__, "state": self.thresholds.state_dict()},
            "dist_align": self.dist_align.state_dict() if self.dist_align is not None else None,
        }
        if include_models:
            out["model"] = unwrap_model(self.model).state_dict()
            out["ema"] = self.ema.module.state_dict() if self.ema is not None else None
        return out

    def load_state_dict(self, state: Mapping[str, Any], *, include_models: bool = True) -> None:
        """Restore from :meth:`state_dict` output; the parts must match this state's configuration.

        Args:
            state: Output of :meth:`state_dict` (after a save/load round trip or not).
            include_models: Also load ``model`` and ``ema`` (False: they were loaded separately).

        Raises:
            StateError: Missing keys, or a part that is present in one and absent in the other.
        """
        parts = {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "thresholds": self.thresholds,
            "dist_align": self.dist_align,
        }
        if include_models:
            parts.update(model=self.model, ema=self.ema)
        missing = ({"step"} | set(parts)) - set(state)
        if missing:
            raise StateError(f"train state is missing {sorted(missing)}")
        for part, have in parts.items():
            if (state[part] is None) != (have is None):
                raise StateError(
                    f"checkpoint {'lacks' if state[part] is None else 'has'} {part!r} but "
                    f"this train state {'lacks' if have is None else 'has'} it"
                )
        if self.thresholds is not None and state["thresholds"]["kind"] != type(self.thresholds).__name__:
            raise StateError(
                f"checkpoint thresholds are {state['thresholds']['kind']}, "
                f"this state uses {type(self.thresholds).__name__}"
            )
        if include_models:
            unwrap_model(self.model).load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.thresholds is not None:
            self.thresholds.load_state_dict(state["thresholds"]["state"])
        if self.dist_align is not None:
            self.dist_align.load_state_dict(state["dist_align"])
        self.step = int(state["step"])
        self.step_offset = int(state.get("step_offset", 0))


def train_step(
    state: TrainState,
    batch_l: Mapping[str, Tensor],
    batch_u: Mapping[str, Tensor] | None,
    cfg: Any,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    *,
    allow_cpu_amp: bool = False,
) -> dict[str, float]:
    """One FixMatch optimiser step (supervised only when ``batch_u`` is None or ``lambda_u == 0``).

    Labeled, weak and strong images go through the model in one concatenated forward pass, as in
    FixMatch. Then: thresholds (FreeMatch before the mask, FlexMatch after), backward, optimiser,
    scheduler and EMA updates, ``state.step += 1``. One host sync per step, for the metrics.

    Args:
        state: The train state (modified in place).
        batch_l: Labeled batch (see the module docstring).
        batch_u: Unlabeled batch, or None.
        cfg: Config with USB's names (see the module docstring).
        device: Device the model is on.
        amp_dtype: ``torch.bfloat16`` for autocast on CUDA (ignored on CPU unless ``allow_cpu_amp``).
        channels_last: Feed channels_last inputs (convert the model with :func:`prepare_model`).
        allow_cpu_amp: Autocast on a CPU device too.

    Returns:
        ``loss, sup_loss, unsup_loss, mask_rate, lr, step`` and ``pseudo_label_acc`` (over the kept
        pseudo-labels) / ``pseudo_label_acc_all`` (over all) when ``batch_u["y"]`` has known labels
        (NaN when there were none).

    Raises:
        HSSALError: The loss is not finite (the state is left before the optimiser step).
    """
    device = torch.device(device)
    lambda_u, T = float(_cfg(cfg, "lambda_u")), float(_cfg(cfg, "T"))
    unl = batch_u if lambda_u > 0 else None  # None: supervised only
    model = state.model
    model.train()
    x_l, y_l = _inputs(batch_l["x"], device, channels_last), batch_l["y"].to(device, non_blocking=True)
    x = x_l
    if unl is not None:
        x_uw, x_us = (
            _inputs(unl["x_weak"], device, channels_last),
            _inputs(unl["x_strong"], device, channels_last),
        )
        x = torch.cat([x_l, x_uw, x_us])
    with _autocast(device, amp_dtype, allow_cpu_amp):
        logits = model(x)
    logits = logits.float()
    zero = logits.new_zeros(())
    nan = torch.full((), float("nan"), device=logits.device)
    plabel = [nan, nan, nan, nan]
    if unl is not None:
        logits_x = logits[: x_l.shape[0]]
        logits_uw, logits_us = logits[x_l.shape[0] :].chunk(2)
        th, idx = state.thresholds, unl.get("idx")
        if th is not None and th.update_before_masking:
            th.update(torch.softmax(logits_uw.detach() / T, dim=-1), idx)
        loss, stats = fixmatch_loss(
            logits_x,
            y_l,
            logits_uw,
            logits_us,
            p_cutoff=float(_cfg(cfg, "p_cutoff")),
            lambda_u=lambda_u,
            T=T,
            thresholds=th.thresholds() if th is not None else None,
            dist_align=state.dist_align,
            targets=unl.get("targets"),
        )
        if th is not None and not th.update_before_masking:
            th.update(stats.probs, idx)
        sup_loss, unsup_loss, mask_rate = stats.sup_loss, stats.unsup_loss, stats.mask_rate
        if "y" in unl:
            y_u = unl["y"].to(device, non_blocking=True)
            known = y_u >= 0
            hit = (stats.pseudo_labels == y_u) & known
            kept = known & stats.mask.bool()
            plabel = [(hit & kept).sum(), kept.sum(), hit.sum(), known.sum()]
    else:
        loss = F.cross_entropy(logits, y_l)
        sup_loss, unsup_loss, mask_rate = loss.detach(), zero, zero
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    values = torch.stack(
        [loss.detach(), sup_loss, unsup_loss, mask_rate, *[v.float() for v in plabel]]
    ).tolist()
    if not math.isfinite(values[0]):
        raise HSSALError(f"non-finite training loss {values[0]} at step {state.step}")
    lr = float(state.optimizer.param_groups[0]["lr"])
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    if state.ema is not None:
        state.ema.update(unwrap_model(model), step=state.step_offset + state.step + 1)
    state.step += 1
    metrics = dict(zip(("loss", "sup_loss", "unsup_loss", "mask_rate"), values[:4], strict=True))
    metrics.update(lr=lr, step=float(state.step))
    if unl is not None and "y" in unl:
        c_kept, n_kept, c_all, n_all = values[4:]
        metrics["pseudo_label_acc"] = c_kept / n_kept if n_kept > 0 else float("nan")
        metrics["pseudo_label_acc_all"] = c_all / n_all if n_all > 0 else float("nan")
    return metrics
