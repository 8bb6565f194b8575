"""The round's decisions that both learners share: seeds, SSL on/off, autocast, optimiser, scored views.

Plain Python and torch, no Ray: the image-level learner (Ray Train + Ray Data) and the frozen
learner (embedding store) both call these, so a round is seeded, trained and scored by the same
rules on either path.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import torch

__all__ = [
    "derive_seed",
    "ssl_active",
    "amp_dtype",
    "build_optimization",
    "scores_strong_view",
    "scores_committee",
    "pool_sample_rows",
]

log = logging.getLogger(__name__)


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from the run seed and any labels (round, stage, ...)."""
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def ssl_active(cfg: Any, pool_rows: int, round_idx: int | None = None) -> bool:
    """Whether a round trains with the unlabeled term: the one place that decides it.

    Off when ``ssl.enabled`` is false or ``ssl.lambda_u`` is 0, and (with a warning) when the
    unlabeled pool is empty: the round then trains supervised only, for its full step count.
    """
    if not (cfg.ssl.enabled and cfg.ssl.lambda_u > 0):
        return False
    if pool_rows == 0:
        where = f"round {round_idx}: " if round_idx is not None else ""
        log.warning("%sthe unlabeled pool is empty: training supervised only on the labeled set", where)
        return False
    return True


def amp_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``ssl.amp`` on ``device``, for training, scoring, encoding and prediction.

    ``none``: no autocast. ``auto``: bfloat16 on CUDA, none elsewhere. ``bf16``: bfloat16 on any
    device, CPU included. Why ``bf16`` autocasts on a CPU: it is the explicit request, and it
    differs from ``auto`` only there, so reading it as ``auto`` would leave it without effect; and
    one rule for every caller means a model trained under bfloat16 autocast is scored, evaluated,
    encoded and used for prediction with the same numerics.
    """
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def build_optimization(
    cfg: Any, model: torch.nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A fresh SGD optimizer and cosine schedule over ``total_steps`` for ``model`` (one round)."""
    from hssal_ray.ssl.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(
        model,
        lr=cfg.ssl.lr,
        momentum=cfg.ssl.momentum,
        weight_decay=cfg.ssl.weight_decay,
        nesterov=cfg.ssl.nesterov,
    )
    return optimizer, build_scheduler(
        optimizer, total_steps=total_steps, warmup_steps=cfg.ssl.warmup_steps, schedule=cfg.ssl.lr_schedule
    )


def scores_strong_view(cfg: Any) -> bool:
    """Whether the score stage scores a strong view too (both learners ask this).

    Only the query reads what the strong view adds to ``scores.parquet`` (``u_disagreement`` and
    ``confident``): ``query.uncertainty=disagreement`` (or ``late_uncertainty``, with ``pick: auto`` /
    ``auto_local``) ranks by the first, as ``query.alloc_flips`` weighs HAL's coarse clusters by it,
    ``query.ssl_aware`` reads the second. Without any of these, the columns are left out on both
    paths and the extra forward is saved.
    """
    return "disagreement" in cfg.query.scores_read() or bool(cfg.query.ssl_aware)


def scores_committee(cfg: Any) -> bool:
    """Whether the frozen learner keeps the round's committee and scores ``u_committee``.

    Only ``query.uncertainty=committee`` reads the column, or ``query.late_uncertainty=committee``
    with ``pick`` ``auto``/``auto_local`` (the only picks that read it). The config allows
    ``committee`` only on the frozen path with graph pseudo-labels, where the teacher and the
    smoothed labels exist.
    """
    return "committee" in cfg.query.scores_read()


def pool_sample_rows(
    labeled: np.ndarray, size: int, budget: int, seed: int, round_idx: Any, candidate_ratio: float = 1.0
) -> np.ndarray | None:
    """The rows the score stage scores under ``query.pool_sample``: every labeled row and ``size``
    unlabeled rows drawn uniformly without replacement (seeded by ``seed`` and ``round_idx``), sorted;
    None when the sample would hold the whole pool (``size`` 0 or at least the unlabeled count).

    Args:
        labeled: Boolean mask over the scorable rows: which are labeled.
        size: Unlabeled rows to draw (``query.pool_sample`` resolved to a count).
        budget: The round's batch: a sample smaller than it is an error.
        seed: The run's seed.
        round_idx: The round, or ``"cold_start"`` (the same round draws the same rows).
        candidate_ratio: HAL's candidates per pick: a sample below ``candidate_ratio * budget``
            is logged as a warning (the ranking would have nothing to leave out).
    """
    from hssal_ray.errors import ConfigError

    unlabeled = np.flatnonzero(~labeled)
    if size <= 0 or size >= len(unlabeled):
        return None
    if size < budget:
        raise ConfigError(
            f"query.pool_sample: {size} unlabeled rows would be scored, fewer than the {budget} this query "
            "picks; raise query.pool_sample (0 scores the whole pool)"
        )
    if size < candidate_ratio * budget:
        log.warning(
            "query.pool_sample: %d rows scored for a batch of %d: fewer than the query's %g x %d candidates, "
            "so the uncertainty ranking leaves nothing out",
            size,
            budget,
            candidate_ratio,
            budget,
        )
    rng = np.random.default_rng(derive_seed(seed, "pool_sample", round_idx))
    picked = rng.choice(unlabeled, size=size, replace=False)
    return np.sort(np.concatenate([np.flatnonzero(labeled), picked]))
