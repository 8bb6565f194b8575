"""Evaluation and prediction with a trained model: accuracy, loss and per-class accuracy; embeddings and
class probabilities."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hssal_ray.errors import DataError
from hssal_ray.models import unwrap_model
from hssal_ray.ssl._device import _autocast, _inputs


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
