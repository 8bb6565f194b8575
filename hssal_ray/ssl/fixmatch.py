"""FixMatch's stateful helpers: class-wise adaptive thresholds and distribution alignment.

Names follow USB (semilearn): ``p_cutoff``, ``lambda_u``, ``T``. The loss itself is one readable
function, :func:`~hssal_ray.ssl.loss.fixmatch_loss` in :mod:`hssal_ray.ssl.loss`. Class-wise thresholds
(:class:`FlexMatchThresholds`, :class:`FreeMatchThresholds`) and :class:`DistributionAlignment`
keep their state as tensors with ``state_dict()``/``load_state_dict()``, so it goes into
checkpoints, and average their batch statistics across DDP ranks when ``torch.distributed`` is
initialised (every rank then holds the same state).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from hssal_ray.errors import ConfigError, StateError

__all__ = [
    "ClasswiseThresholds",
    "DistributionAlignment",
    "FlexMatchThresholds",
    "FreeMatchThresholds",
    "build_thresholds",
]

logger = logging.getLogger(__name__)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over DDP ranks (``t`` itself when not distributed)."""
    world = _world_size()
    if world == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world


def _all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate ``t`` (any first-dimension length per rank) over DDP ranks along dim 0."""
    world = _world_size()
    if world == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


class _TensorState:
    """Plumbing for objects whose whole state is the tensors named in ``_state_names``."""

    _state_names: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Tensor]:
        """The state as ``{name: tensor}`` (CPU copies)."""
        return {name: getattr(self, name).detach().cpu().clone() for name in self._state_names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` output.

        Raises:
            StateError: Missing keys, extra keys or shapes that do not match this object.
        """
        if set(state) != set(self._state_names):
            raise StateError(
                f"{type(self).__name__} state has keys {sorted(state)}, expected {sorted(self._state_names)}"
            )
        for name in self._state_names:
            current: Tensor = getattr(self, name)
            value = torch.as_tensor(state[name])
            if value.shape != current.shape:
                raise StateError(
                    f"{type(self).__name__}.{name} has shape {tuple(value.shape)}, "
                    f"expected {tuple(current.shape)}"
                )
            setattr(self, name, value.to(device=current.device, dtype=current.dtype).clone())

    def to(self, device: torch.device | str) -> _TensorState:
        """Move the state tensors to ``device`` (in place); returns ``self``."""
        for name in self._state_names:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def all_reduce_(self) -> None:
        """Average float state over DDP ranks, broadcast the rest from rank 0 (no-op if not distributed)."""
        if _world_size() == 1:
            return
        for name in self._state_names:
            t: Tensor = getattr(self, name)
            if t.is_floating_point():
                setattr(self, name, _all_reduce_mean(t))
            else:
                t = t.clone()
                dist.broadcast(t, src=0)
                setattr(self, name, t)

    def _follow(self, ref: Tensor) -> None:
        if getattr(self, self._state_names[0]).device != ref.device:
            self.to(ref.device)


class ClasswiseThresholds(_TensorState, ABC):
    """Class-wise adaptive confidence thresholds.

    ``update_before_masking`` says whether the current batch updates the state before its mask is
    computed (FreeMatch) or after (FlexMatch).
    """

    update_before_masking: ClassVar[bool] = False

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"class-wise thresholds need num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes

    @abstractmethod
    def update(self, probs_weak: Tensor, idx: Tensor | None = None) -> None:
        """Update the state from weak-view probabilities ``(B_u, C)`` (``idx``: unlabeled ids ``(B_u,)``)."""

    @abstractmethod
    def thresholds(self) -> Tensor:
        """Current thresholds ``(C,)``."""


class FlexMatchThresholds(ClasswiseThresholds):
    """FlexMatch curriculum pseudo-labeling (Zhang et al., 2021): ``tau_c = p_cutoff * M(beta_c)``.

    ``sigma_c`` counts unlabeled samples whose latest prediction is class ``c`` with confidence
    ``>= p_cutoff``; ``beta_c = sigma_c / max_c' sigma_c'`` or, with warm-up, ``sigma_c / max(max sigma,
    #unused)``. With ``num_unlabeled`` set, ``sigma`` comes from a per-sample memory as in the paper
    and :meth:`update` needs the samples' indices. Without it (the default, for pools that change
    every round), ``sigma`` and ``#unused`` are EMAs of the per-batch fractions with ``momentum``.

    Args:
        num_classes: Number of classes ``C``.
        p_cutoff: The upper threshold.
        thresh_warmup: Count unused samples in the normalisation (the paper's threshold warm-up).
        mapping: ``"convex"`` ``M(x) = x / (2 - x)`` (the paper's default) or ``"linear"`` ``M(x) = x``.
        num_unlabeled: Size of the unlabeled set for the exact per-sample memory.
        momentum: EMA momentum of the index-free estimate; its window, about ``1 / (1 - momentum)`` steps,
            stands in for the paper's pass over the unlabeled set.
    """

    update_before_masking = False

    def __init__(
        self,
        num_classes: int,
        p_cutoff: float = 0.95,
        *,
        thresh_warmup: bool = True,
        mapping: Literal["convex", "linear"] = "convex",
        num_unlabeled: int | None = None,
        momentum: float = 0.99,
    ) -> None:
        super().__init__(num_classes)
        if mapping not in ("convex", "linear") or not 0.0 <= p_cutoff <= 1.0 or not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"bad FlexMatch settings: mapping={mapping!r} p_cutoff={p_cutoff} momentum={momentum}"
            )
        self.p_cutoff = p_cutoff
        self.thresh_warmup = thresh_warmup
        self.mapping = mapping
        self.momentum = momentum
        self.num_unlabeled = num_unlabeled
        if num_unlabeled is not None:
            if num_unlabeled < 1:
                raise ConfigError(f"num_unlabeled must be >= 1, got {num_unlabeled}")
            self._state_names = ("selected_label",)
            self.selected_label = torch.full((num_unlabeled,), -1, dtype=torch.long)
        else:
            self._state_names = ("class_freq", "unused_freq")
            self.class_freq = torch.zeros(num_classes)
            self.unused_freq = torch.ones(())

    @torch.no_grad()
    def update(self, probs_weak: Tensor, idx: Tensor | None = None) -> None:
        """Record a batch's confident predictions ``(B_u, C)``; a memory also needs ``idx`` ``(B_u,)``."""
        self._follow(probs_weak)
        max_probs, pred = probs_weak.detach().float().max(dim=-1)
        select = max_probs >= self.p_cutoff
        if self.num_unlabeled is not None:
            if idx is None:
                raise ValueError(
                    "FlexMatchThresholds(num_unlabeled=...) needs the unlabeled indices in update()"
                )
            idx, pred, select = (_all_gather_cat(t.to(probs_weak.device)) for t in (idx, pred, select))
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_unlabeled):
                raise ValueError(f"unlabeled indices must be in [0, {self.num_unlabeled})")
            self.selected_label[idx] = torch.where(select, pred, self.selected_label[idx])
            return
        # Scatter instead of boolean indexing / bincount: no host-device sync on CUDA.
        counts = torch.zeros(self.num_classes, device=pred.device).scatter_add_(0, pred, select.float())
        frac = counts / max(pred.numel(), 1)
        frac = _all_reduce_mean(frac)
        unused = 1.0 - frac.sum()
        m = self.momentum
        self.class_freq = m * self.class_freq + (1 - m) * frac
        self.unused_freq = m * self.unused_freq + (1 - m) * unused

    def thresholds(self) -> Tensor:
        """``p_cutoff * M(beta_c)``, shape ``(C,)``."""
        if self.num_unlabeled is not None:
            memory = self.selected_label + 1  # 0 = unused, c + 1 = class c
            counts = torch.zeros(self.num_classes + 1, device=memory.device)
            counts.scatter_add_(0, memory, torch.ones_like(memory, dtype=counts.dtype))
            sigma, unused = counts[1:], counts[0]
        else:
            sigma, unused = self.class_freq, self.unused_freq
        denom = torch.maximum(sigma.max(), unused) if self.thresh_warmup else sigma.max()
        beta = sigma / denom.clamp(min=1e-12)  # denom == 0 only when sigma == 0: beta = 0
        mapped = beta / (2.0 - beta) if self.mapping == "convex" else beta
        return self.p_cutoff * mapped


class FreeMatchThresholds(ClasswiseThresholds):
    """FreeMatch self-adaptive thresholds (Wang et al., 2023): ``tau_c = tau * p_c / max_c' p_c'``.

    The global ``tau`` is an EMA of the batch mean confidence (or its 0.8 quantile) and ``p`` an EMA of
    the batch mean probabilities; both start at ``1 / C``. The batch updates the state before its
    mask is computed, as in the paper. (FreeMatch's self-adaptive fairness loss is not part of this.)

    Args:
        num_classes: Number of classes ``C``.
        momentum: EMA momentum ``lambda`` (0.999 in the paper).
        use_quantile: Use the 0.8 quantile of the confidences instead of their mean.
        clip_thresh: Clip the global threshold to ``[0, 0.95]``.
    """

    update_before_masking = True
    _state_names = ("time_p", "p_model")

    def __init__(
        self,
        num_classes: int,
        *,
        momentum: float = 0.999,
        use_quantile: bool = False,
        clip_thresh: bool = False,
    ) -> None:
        super().__init__(num_classes)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"FreeMatch momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.use_quantile = use_quantile
        self.clip_thresh = clip_thresh
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.time_p = torch.tensor(1.0 / num_classes)

    @torch.no_grad()
    def update(self, probs_weak: Tensor, idx: Tensor | None = None) -> None:
        """EMA-update the global and class-wise estimates from a batch ``(B_u, C)`` (``idx`` is unused)."""
        self._follow(probs_weak)
        probs = probs_weak.detach().float()
        if self.use_quantile:
            probs = _all_gather_cat(probs)
            confidence = torch.quantile(probs.max(dim=-1).values, 0.8)
            mean_probs = probs.mean(dim=0)
        else:
            stats = _all_reduce_mean(
                torch.cat([probs.max(dim=-1).values.mean().reshape(1), probs.mean(dim=0)])
            )
            confidence, mean_probs = stats[0], stats[1:]
        m = self.momentum
        self.time_p = m * self.time_p + (1 - m) * confidence
        if self.clip_thresh:
            self.time_p = self.time_p.clamp(0.0, 0.95)
        self.p_model = m * self.p_model + (1 - m) * mean_probs

    def thresholds(self) -> Tensor:
        """``time_p * p_model / max(p_model)``, shape ``(C,)``."""
        return self.time_p * self.p_model / self.p_model.max()


class DistributionAlignment(_TensorState):
    """ReMixMatch-style distribution alignment: ``p <- normalize(p * p_target / running_mean(p))``.

    The running mean is an EMA of the batch mean of the unlabeled probabilities, initialised with the
    first batch's mean (as in USB's ``DistAlignEMAHook``).

    Args:
        num_classes: Number of classes ``C``.
        momentum: EMA momentum of the running mean.
        p_target: Target class distribution ``(C,)``; uniform when None.
    """

    _state_names = ("p_model", "initialized")

    def __init__(self, num_classes: int, *, momentum: float = 0.999, p_target: Tensor | None = None) -> None:
        if num_classes < 2 or not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"bad distribution alignment settings: num_classes={num_classes} momentum={momentum}"
            )
        target = torch.full((num_classes,), 1.0 / num_classes) if p_target is None else p_target.float().cpu()
        if target.shape != (num_classes,) or bool((target < 0).any()) or float(target.sum()) <= 0:
            raise ConfigError(f"p_target must be a non-negative ({num_classes},) distribution")
        self.num_classes = num_classes
        self.momentum = momentum
        self.p_target = target / target.sum()
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.initialized = torch.tensor(False)

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """Fold the batch mean of ``probs`` ``(B, C)`` into the running mean."""
        self._follow(probs)
        mean = _all_reduce_mean(probs.detach().float().mean(dim=0))
        ema = self.momentum * self.p_model + (1 - self.momentum) * mean
        self.p_model = torch.where(self.initialized, ema, mean)  # no host-device sync
        self.initialized = torch.ones_like(self.initialized)

    @torch.no_grad()
    def align(self, probs: Tensor) -> Tensor:
        """Aligned, renormalised probabilities ``(B, C)`` (the state is not changed)."""
        target = self.p_target.to(probs.device)
        aligned = probs * (target + 1e-6) / (self.p_model.to(probs.device) + 1e-6)
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def __call__(self, probs: Tensor) -> Tensor:
        """Update the running mean with ``probs`` ``(B, C)``, then return them aligned."""
        self.update(probs)
        return self.align(probs)


def build_thresholds(
    mode: str, num_classes: int, p_cutoff: float = 0.95, **kwargs: object
) -> ClasswiseThresholds | None:
    """Thresholds for ``threshold_mode``: None for ``"fixed"``, else FlexMatch or FreeMatch.

    Raises:
        ConfigError: Unknown mode.
    """
    if mode == "fixed":
        return None
    if mode == "flexmatch":
        return FlexMatchThresholds(num_classes, p_cutoff, **kwargs)  # type: ignore[arg-type]
    if mode == "freematch":
        return FreeMatchThresholds(num_classes, **kwargs)  # type: ignore[arg-type]
    raise ConfigError(f"unknown threshold_mode {mode!r}; valid: 'fixed', 'flexmatch', 'freematch'")
