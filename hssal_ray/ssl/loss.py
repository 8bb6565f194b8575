"""The FixMatch loss, one readable function: :func:`fixmatch_loss` (USB's names ``p_cutoff``,
``lambda_u``, ``T``), and what it computed (:class:`FixMatchStats`). Pure torch, no state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hssal_ray.errors import ConfigError

if TYPE_CHECKING:
    from hssal_ray.ssl.fixmatch import DistributionAlignment


@dataclass
class FixMatchStats:
    """What :func:`fixmatch_loss` computed, detached, for logging and pseudo-label accuracy.

    Attributes:
        sup_loss: Supervised cross-entropy, 0-dim tensor.
        unsup_loss: Masked unlabeled cross-entropy, 0-dim tensor.
        mask_rate: Fraction of unlabeled samples kept, 0-dim tensor.
        pseudo_labels: Hard pseudo-labels, ``(B_u,)`` long.
        mask: 1.0 where the pseudo-label is used, ``(B_u,)`` float.
        max_probs: Confidence of the pseudo-labels, ``(B_u,)``.
        probs: Weak-view probabilities after temperature and alignment, ``(B_u, C)``.
    """

    sup_loss: Tensor
    unsup_loss: Tensor
    mask_rate: Tensor
    pseudo_labels: Tensor
    mask: Tensor
    max_probs: Tensor
    probs: Tensor


def fixmatch_loss(
    logits_x: Tensor,
    y: Tensor,
    logits_u_weak: Tensor,
    logits_u_strong: Tensor,
    *,
    p_cutoff: float,
    lambda_u: float,
    T: float = 1.0,
    thresholds: Tensor | None = None,
    dist_align: DistributionAlignment | None = None,
    targets: Tensor | None = None,
) -> tuple[Tensor, FixMatchStats]:
    """FixMatch: ``CE(logits_x, y) + lambda_u * mean_i(mask_i * CE(logits_u_strong_i, pseudo_i))``.

    Pseudo-labels come from the weak view, detached: ``p = softmax(logits_u_weak / T)``, optionally
    aligned by ``dist_align`` (which updates its running mean), ``pseudo = argmax p`` and
    ``mask = max p >= threshold``, with the global ``p_cutoff`` or, when given, the class-wise
    ``thresholds[pseudo]``. The unlabeled loss is averaged over all unlabeled samples, masked or not
    (FixMatch's convention). Losses are computed in float32 whatever the logits' dtype.

    Args:
        logits_x: Labeled logits ``(B_l, C)``.
        y: Labels ``(B_l,)`` long.
        logits_u_weak: Weak-view unlabeled logits ``(B_u, C)``.
        logits_u_strong: Strong-view unlabeled logits ``(B_u, C)``.
        p_cutoff: Global confidence threshold, in ``[0, 1]``.
        lambda_u: Weight of the unlabeled loss.
        T: Softmax temperature of the pseudo-label probabilities.
        thresholds: Class-wise thresholds ``(C,)`` that replace ``p_cutoff``.
        dist_align: Distribution alignment applied to the weak-view probabilities.
        targets: ``(B_u, C)`` probabilities that replace the weak view's (a teacher's
            pseudo-labels, e.g. graph-smoothed ones); ``T`` and ``dist_align`` then do not apply.

    Returns:
        ``(loss, stats)``: the scalar loss to back-propagate and the detached statistics.

    Raises:
        ConfigError: ``p_cutoff``, ``lambda_u`` or ``T`` out of range.
        ValueError: Inconsistent shapes.
    """
    if not 0.0 <= p_cutoff <= 1.0 or lambda_u < 0.0 or T <= 0.0:
        raise ConfigError(f"need 0 <= p_cutoff <= 1, lambda_u >= 0, T > 0; got {p_cutoff}, {lambda_u}, {T}")
    if logits_u_weak.shape != logits_u_strong.shape or logits_u_weak.ndim != 2 or logits_u_weak.shape[0] == 0:
        raise ValueError(
            f"weak/strong logits must be equal non-empty (B_u, C): {logits_u_weak.shape}, "
            f"{logits_u_strong.shape}"
        )
    if logits_x.shape[1:] != logits_u_weak.shape[1:]:
        raise ValueError(
            f"labeled and unlabeled logits disagree on classes: {logits_x.shape}, {logits_u_weak.shape}"
        )
    if targets is not None and targets.shape != logits_u_weak.shape:
        raise ValueError(f"targets must be (B_u, C)={tuple(logits_u_weak.shape)}, got {tuple(targets.shape)}")
    if thresholds is not None and thresholds.shape != (logits_u_weak.shape[1],):
        raise ValueError(f"thresholds must be (C,)={logits_u_weak.shape[1]}, got {tuple(thresholds.shape)}")

    sup_loss = F.cross_entropy(logits_x.float(), y)

    with torch.no_grad():
        if targets is not None:
            probs = targets.detach().float().to(logits_u_weak.device)
        else:
            probs = torch.softmax(logits_u_weak.detach().float() / T, dim=-1)
            if dist_align is not None:
                probs = dist_align(probs)
        max_probs, pseudo_labels = probs.max(dim=-1)
        cutoff = thresholds.to(probs.device)[pseudo_labels] if thresholds is not None else p_cutoff
        mask = (max_probs >= cutoff).float()

    per_sample = F.cross_entropy(logits_u_strong.float(), pseudo_labels, reduction="none")
    unsup_loss = (per_sample * mask).mean()
    loss = sup_loss + lambda_u * unsup_loss
    stats = FixMatchStats(
        sup_loss=sup_loss.detach(),
        unsup_loss=unsup_loss.detach(),
        mask_rate=mask.mean(),
        pseudo_labels=pseudo_labels,
        mask=mask,
        max_probs=max_probs,
        probs=probs,
    )
    return loss, stats
