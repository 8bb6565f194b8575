"""What the frozen learner derives once per run from the store and the training split, kept with the store.

The standardisation statistics of the training split's clean view (:func:`run_stats`) and, for
``frozen.pseudo_labels=graph``, the k-NN graph of the training split (:func:`run_graph`), which is
also saved beside the store (``graph-<key>.npz``, keyed by the store, the rows, the statistics and
the search), so runs and seeds sharing a ``data.embedding_cache`` build it once. With
``resources.store_shards >= 2`` the graph is searched on Ray actors, one per row range of the
store (:mod:`hssal_ray.frozen.sharded`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from hssal_ray import _io

__all__ = ["run_stats", "run_graph", "GRAPH_VERSION"]

GRAPH_VERSION = 2
"""Part of the graph cache key: raise it when the graph's construction changes."""

log = logging.getLogger(__name__)


def run_stats(cfg: Any, store: Any, rows: np.ndarray) -> tuple[Any, Any]:
    """Standardisation statistics of the clean view of ``rows`` (the training split), once per run."""
    from hssal_ray.frozen.head import feature_stats

    key = f"stats:{cfg.frozen.feature_norm}:{_digest(rows)}"
    if key not in store.cache:
        store.cache[key] = feature_stats(cfg, store.views["none"], rows)
    return store.cache[key]


def run_graph(cfg: Any, store: Any, rows: np.ndarray, stats: tuple[Any, Any], progress: Any = None) -> Any:
    """The k-NN graph of ``rows`` (the training split): kept with the store, saved beside it.

    Built once per store, rows, statistics and search (:func:`hssal_ray.frozen.graph.build_graph`;
    exact up to ``frozen.graph_max_nodes`` nodes, or on a GPU with ``resources.use_gpu``); a saved
    graph that does not read back is built again.
    """
    import torch

    from hssal_ray.frozen import graph as g
    from hssal_ray.frozen import knn_search as ks
    from hssal_ray.frozen.head import graph_features
    from hssal_ray.frozen.sharded import shard_count, sharded_graph

    device = "cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else None
    n = len(rows)
    shards = shard_count(cfg)
    method = "exact" if n <= cfg.frozen.graph_max_nodes or device == "cuda" or shards >= 2 else "ivf"
    spec = {
        "version": GRAPH_VERSION,
        "store": store.key or store.path,
        "rows": _digest(rows),
        "stats": _digest(stats[0].numpy(), stats[1].numpy()),
        "feature_norm": cfg.frozen.feature_norm,
        "k": cfg.frozen.graph_k,
        "method": method,
        "ivf": [ks.LIST_ROWS, ks.PROBE_ROWS, ks.PCA_DIM, ks.KMEANS_ITERS, ks.SAMPLE_PER_LIST, ks.NEAR_LISTS]
        if method == "ivf"
        else None,
    }
    key = hashlib.blake2b(repr(sorted(spec.items())).encode(), digest_size=10).hexdigest()
    if f"graph:{key}" in store.cache:
        return store.cache[f"graph:{key}"]
    path = _io.join(store.path, f"graph-{key}.npz")
    graph = None
    if _io.exists(path):
        try:
            graph = g.KnnGraph.from_bytes(_io.read_bytes(path))
            if not np.array_equal(graph.rows, rows) or graph.idx.shape[1] != min(
                cfg.frozen.graph_k, max(n - 1, 0)
            ):
                raise ValueError("its nodes or k differ")
        except (OSError, ValueError, KeyError) as err:
            log.warning("k-NN graph %s is unusable (%s): building it again", path, err)
            graph = None
    if graph is None:
        t0 = time.perf_counter()
        if shards >= 2:  # the exact graph, searched shard by shard on Ray actors
            graph = sharded_graph(cfg, store, rows, stats, shards)
        else:
            feats = graph_features(cfg, store.views, rows, stats)
            graph = g.build_graph(
                feats, rows, cfg.frozen.graph_k, max_exact=cfg.frozen.graph_max_nodes, device=device
            )
        secs = time.perf_counter() - t0
        (progress or log.info)(
            f"[hssal] k-NN graph of {n} training rows ({graph.method}, recall@{cfg.frozen.graph_k} "
            f"{graph.recall:.3f}) built in {secs:.1f} s"
        )
        try:
            _io.atomic_write_bytes(path, graph.to_bytes())
        except OSError as err:  # a read-only cache: the graph is still used for this run
            log.warning("cannot save the k-NN graph to %s (%s)", path, err)
    store.cache[f"graph:{key}"] = graph
    return graph


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=10)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
