"""Round-0 cold-start selection: seeded random, TypiClust-style clusters, or stratified (simulation only)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from hssal_ray.errors import DataError

if TYPE_CHECKING:
    from hssal_ray.loop.context import RunContext

__all__ = ["select_cold_start"]

log = logging.getLogger(__name__)


def select_cold_start(ctx: RunContext) -> list[str]:
    """Pick ``loop.initial_labeled`` ids of the train split for the oracle to label first.

    ``random``: a seeded uniform sample (what a real user without labels can do).
    ``typiclust``: score the pool with the untrained (or pretrained) encoder and pick the most
    typical sample of each of ``n`` k-means clusters (TypiClust).
    ``stratified``: the same number per class using the dataset's labels: a *simulation*
    option for benchmarks only (a real user has no labels yet).
    """
    from hssal_ray.config.loop import label_count

    cfg = ctx.cfg
    train = ctx.split("train")
    ids = np.asarray(train.column("sample_id").to_pylist(), dtype=object)
    n = label_count(cfg.loop.initial_labeled, len(ids))
    if n > len(ids):
        raise DataError(
            f"loop.initial_labeled={cfg.loop.initial_labeled} ({n} samples) exceeds the "
            f"{len(ids)} training samples"
        )
    rng = np.random.default_rng([cfg.seed, 0xC01D])
    mode = cfg.loop.cold_start
    if mode == "random":
        return [str(s) for s in ids[np.sort(rng.choice(len(ids), size=n, replace=False))]]
    if mode == "stratified":
        labels = np.asarray(train.column("label").to_numpy(zero_copy_only=False))
        if (labels < 0).any():
            raise DataError(
                "loop.cold_start=stratified needs labels for every training sample (simulation only)"
            )
        classes = np.unique(labels)
        per = np.full(len(classes), n // len(classes))
        per[: n - per.sum()] += 1
        picked: list[int] = []
        for c, k in zip(classes, rng.permutation(per), strict=True):
            idx = np.flatnonzero(labels == c)
            picked.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
        return [str(s) for s in ids[np.sort(picked)]]
    return _typiclust(ctx, n)


def _typiclust(ctx: RunContext, n: int) -> list[str]:
    """TypiClust on the features the run's learner gives the train split before any training."""
    return _typiclust_pick(ctx.cfg, ctx.learner.cold_start_pool(), n)


def _typiclust_pick(cfg: Any, pool: Any, n: int) -> list[str]:
    from hssal_ray.query import strategy_from_config
    from hssal_ray.rounds import derive_seed

    qcfg = dataclasses.replace(cfg.query, strategy="typiclust")
    strat = strategy_from_config(qcfg, random_state=derive_seed(cfg.seed, "cold_start") % (2**31))
    idx = strat.select(pool, n)
    return [str(pool.ids[i]) for i in idx]
