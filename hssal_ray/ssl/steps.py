"""Plain-torch training pieces that a (Ray Train) worker loop calls: optimiser, schedule, state, steps.

Batches are dicts of ready tensors:

* labeled ``batch_l = {"x": (B, C, H, W) float normalised, "y": (B,) long}``;
* unlabeled ``batch_u = {"x_weak": (B_u, C, H, W), "x_strong": (B_u, C, H, W)}`` plus optional
  ``"y": (B_u,) long`` ground truth (-1 = unknown, for pseudo-label accuracy) and ``"idx": (B_u,) long``
  (indices for FlexMatch's per-sample memory).

``cfg`` is any object with USB's attribute names (missing ones take these defaults):
``p_cutoff=0.95, lambda_u=1.0, T=1.0, ema_m=0.999, threshold_mode="fixed", dist_align=False`` and,
``TrainState.create`` reads ``ema_m``, ``threshold_mode``, ``p_cutoff`` and ``dist_align``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hssal_ray.errors import ConfigError, DataError, HSSALError, StateError
from hssal_ray.models import unwrap_model
from hssal_ray.ssl.ema import build_ema
from hssal_ray.ssl.fixmatch import ClasswiseThresholds, DistributionAlignment, build_thresholds, fixmatch_loss

__all__ = [
    "FixMatchCosine",
    "TrainState",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "predict",
    "prepare_model",
    "train_step",
]

logger = logging.getLogger(__name__)

_DEFAULTS: dict[str, Any] = {
    "p_cutoff": 0.95,
    "lambda_u": 1.0,
    "T": 1.0,
    "ema_m": 0.999,
    "threshold_mode": "fixed",
    "dist_align": False,
    "ema_warmup": True,
    "ema_warmup_power": 2 / 3,
}


def _cfg(cfg: Any, name: str) -> Any:
    return getattr(cfg, name, _DEFAULTS[name])


def prepare_model(model: nn.Module, device: torch.device | str, *, channels_last: bool = False) -> nn.Module:
    """Move a model to ``device`` (and to channels_last memory format); do this before DDP wrapping."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """FixMatch cosine schedule (:class:`FixMatchCosine`); call ``step()`` after each optimiser step.

    Raises:
        ConfigError: ``total_steps < 1`` or ``warmup_steps`` outside ``[0, total_steps]``.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}"
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, FixMatchCosine(total_steps, warmup_steps))


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
            optimizer: From :func:`build_optimizer`.
            scheduler: From :func:`build_scheduler`, or None.
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


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    x, y = batch
    return x, y


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader_or_batches: Iterable[Any],
    device: torch.device | str,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and per-class accuracy over batches of ``{"x", "y"}`` or ``(x, y)``.

    Samples with label -1 are ignored. The model's train/eval mode is restored afterwards.

    Returns:
        ``{"accuracy": float, "loss": float, "per_class_accuracy": list[float] (NaN for absent classes),
        "num_samples": int}``.

    Raises:
        DataError: No labeled sample was seen.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, hits, counts = 0.0, 0.0, None, None
    try:
        for batch in loader_or_batches:
            x, y = _unpack(batch)
            x, y = _inputs(x, device, channels_last), y.to(device, non_blocking=True)
            with _autocast(device, amp_dtype, False):
                logits = model(x)
            logits, keep = logits.float(), y >= 0
            logits, y = logits[keep], y[keep]
            if counts is None:
                hits = torch.zeros(logits.shape[1], device=device)
                counts = torch.zeros(logits.shape[1], device=device)
            ok = (logits.argmax(dim=1) == y).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item() if y.numel() else 0.0
            correct += float(ok.sum())
            hits.index_add_(0, y, ok)  # type: ignore[union-attr]
            counts.index_add_(0, y, torch.ones_like(ok))
    finally:
        model.train(was_training)
    n = int(counts.sum()) if counts is not None else 0
    if n == 0 or hits is None or counts is None:
        raise DataError("evaluate() got no labeled samples")
    per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(counts, float("nan")))
    return {
        "accuracy": correct / n,
        "loss": loss_sum / n,
        "per_class_accuracy": per_class.tolist(),
        "num_samples": n,
    }


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, amp_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """L2-normalised embeddings ``(B, D)`` and class probabilities ``(B, C)``, float32, on the model's device.

    ``model`` needs ``forward_features_logits`` (a :class:`~hssal_ray.models.Classifier`, maybe wrapped).
    """
    plain = unwrap_model(model)
    device = next(plain.parameters()).device
    was_training = plain.training
    plain.eval()
    try:
        with _autocast(device, amp_dtype, False):
            emb, logits = plain.forward_features_logits(x.to(device, non_blocking=True))  # type: ignore[operator]
    finally:
        plain.train(was_training)
    return F.normalize(emb.float(), dim=1), torch.softmax(logits.float(), dim=1)
