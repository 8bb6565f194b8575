"""The round's query batch from a scores file: load the pool, run the configured strategy, return the picks.

The ``query`` stage (:mod:`hssal_ray.loop.stages.query`) writes what this returns; benchmarks call it
directly on a scores file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hssal_ray.config import ExperimentConfig

__all__ = ["run_query", "ray_map"]

log = logging.getLogger(__name__)


def ray_map(fn: Any, *iterables: Any) -> list[Any]:
    """``map`` over Ray tasks (order preserved); used for HAL's independent per-cluster steps."""
    import ray

    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(*args) for args in zip(*iterables, strict=True)])


def run_query(
    cfg: ExperimentConfig,
    scores_path: str,
    budget: int,
    labeled_ids: set[str] | Mapping[str, int],
    round_idx: int,
    embeddings: Callable[[np.ndarray], Any] | None = None,
) -> tuple[list[str], list[float], list[int] | None, dict[str, Any]]:
    """Select ``budget`` pool samples from a scores file.

    ``labeled_ids`` are left out of the selection; a mapping id -> class also gives the strategy
    the labeled rows' classes (``Pool.labels``, read by HAL's ``alloc_purity``).
    ``embeddings``, given the pool's ids, returns its embeddings (e.g. the frozen learner's
    :class:`~hssal_ray.frozen.query_rows.StoreUnitRows`: the scores file's values, read by row);
    the file's ``embedding`` column is then not read.

    Returns:
        ``(ids, uncertainty, coarse_cluster or None, info)`` where ``info`` goes into metrics.jsonl
        (e.g. ``coarse_k``, ``coarse_clusters_covered``), with where the time went (``perf_counter``
        seconds): ``query_load_s`` reading the pool and leaving out the labeled ids,
        ``query_select_s`` the strategy's selection and the picks' uncertainties; ``query_pool_rows``
        and ``query_embedding_mb``, the pool it read (labeled rows included).
    """
    from hssal_ray.query import load_pool, strategy_from_config
    from hssal_ray.query.scores_io import exclude_mask, pool_labels
    from hssal_ray.rounds import derive_seed

    t0 = time.perf_counter()
    pool = load_pool(scores_path, skip=["embedding"] if embeddings is not None else ())
    if embeddings is not None:
        pool.embeddings = embeddings(pool.ids)
    if labeled_ids:  # Arrow hash join: no sort of the object id array (np.isin)
        pool.exclude = exclude_mask(pool.ids, sorted(labeled_ids))
        if isinstance(labeled_ids, Mapping):
            pool.labels = pool_labels(pool.ids, pool.exclude, labeled_ids)
    t1 = time.perf_counter()
    extra = {"map_fn": ray_map} if cfg.query.parallel and cfg.query.strategy == "hal" else {}
    strat = strategy_from_config(
        cfg.query, random_state=derive_seed(cfg.seed, round_idx, "query") % (2**31), **extra
    )
    budget = min(budget, int(len(pool.ids) - (pool.exclude.sum() if pool.exclude is not None else 0)))
    idx = np.asarray(strat.select(pool, budget))
    key = f"u_{cfg.query.uncertainty}"
    u_all = pool.scores.get(key)
    u = [float(u_all[i]) for i in idx] if u_all is not None else [float("nan")] * len(idx)
    t2 = time.perf_counter()
    info_attr = getattr(strat, "info_", {}) or {}
    coarse = info_attr.get("pick_coarse_cluster")
    info: dict[str, Any] = {"query_strategy": repr(strat)}
    if coarse is not None and len(coarse) == len(idx) and int(np.max(coarse, initial=-1)) >= 0:
        coarse = [int(c) for c in coarse]
        info["coarse_k"] = int(info_attr.get("coarse_k", len(set(coarse))))
        info["coarse_clusters_covered"] = len(set(coarse))
    else:
        coarse = None
    if "pick" in info_attr:  # HAL's pick rule this round (``pick: auto`` changes it with the budget)
        info["query_pick"] = str(info_attr["pick"])
    info["query_mean_u"] = float(np.nanmean(u)) if len(u) else float("nan")
    info["query_load_s"] = t1 - t0
    info["query_select_s"] = t2 - t1
    info["query_pool_rows"] = int(len(pool.ids))
    emb = pool.embeddings
    info["query_embedding_mb"] = float(emb.nbytes / 2**20) if emb is not None else 0.0
    info["query_embeddings_from"] = "store" if embeddings is not None else "scores"
    return [str(pool.ids[i]) for i in idx], u, coarse, info
