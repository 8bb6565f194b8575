"""The round's train, evaluate and score stages for ``ssl.finetune=frozen`` (the loop stages call these).

Every stage reads the run's embedding store (:mod:`hssal_ray.frozen.store`, encoded once) and writes
the same files as the image-level path: ``round_XXX/checkpoint/`` (the head's online and EMA weights),
``train_metrics.json``, ``scores.parquet`` (the scores contract, so every query strategy works
unchanged) and the metrics row. No Ray is needed after the encode.

What depends only on the store and the training split is derived once per run and kept with the
store (``EmbeddingStore.cache``): the standardisation statistics of the training split's clean
view, and (``ssl.pseudo_labels=graph``) the k-NN graph of the training split, which is also saved
beside the store (``graph-<key>.npz``, keyed by the store, the rows, the statistics and the search),
so runs and seeds sharing a ``data.embedding_cache`` build it once. Scores are written block by
block (:class:`~hssal_ray.query.scores_table.ScoresWriter`): memory follows the block, not the pool.
With ``resources.store_shards >= 2`` the graph build and the scoring run on Ray actors, one per
row range of the store (:mod:`hssal_ray.frozen.sharded`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from hssal_ray import _io
from hssal_ray.rounds import (
    checkpoint_meta,
    classification_metrics,
    derive_seed,
    empty_scores_table,
    load_weights,
    round_ema_initial_weight,
    scores_strong_view,
    scores_table,
    ssl_active,
    warm_start_of,
    write_checkpoint,
)
from hssal_ray.state import LabeledSet, round_dir

__all__ = [
    "store_of",
    "feature_pool",
    "train",
    "evaluate",
    "score",
    "run_stats",
    "run_graph",
    "write_scores_of",
    "GRAPH_VERSION",
]

GRAPH_VERSION = 2
"""Part of the graph cache key: raise it when the graph's construction changes."""
SCORE_BLOCK_ROWS = 16384
"""Rows scored and written per block (one Parquet row group each)."""

log = logging.getLogger(__name__)


def store_of(ctx: Any) -> Any:
    """The run's embedding store, encoded on first use and kept on the run context."""
    from hssal_ray.frozen.store import ensure_store

    store = ctx.embedding_store
    if store is None:
        from hssal_ray._ray import ensure_ray

        ensure_ray(ctx.cfg.resources)
        store = ensure_store(ctx.cfg, ctx.catalog, ctx.run_dir, progress=ctx.progress)
        ctx.embedding_store = store
    return store


def _rows(store: Any, table: pa.Table) -> np.ndarray:
    rows = store.rows_of(table.column("sample_id"))
    return rows[~store.missing[rows]]


def feature_pool(ctx: Any, table: pa.Table) -> Any:
    """A query :class:`~hssal_ray.query.Pool` of the rows of ``table`` with their clean features only."""
    import torch

    from hssal_ray.frozen.store import scan_rows
    from hssal_ray.query import Pool

    store = store_of(ctx)
    rows = _rows(store, table)
    emb = np.empty((len(rows), store.dim), dtype=np.float16)
    for s, x in scan_rows(store.views["none"], rows):
        emb[s : s + len(x)] = torch.nn.functional.normalize(x, dim=1, eps=1e-12).half().numpy()
    return Pool(ids=store.ids[rows], embeddings=emb)


def run_stats(cfg: Any, store: Any, rows: np.ndarray) -> tuple[Any, Any]:
    """Standardisation statistics of the clean view of ``rows`` (the training split), once per run."""
    from hssal_ray.frozen.head import feature_stats

    key = f"stats:{cfg.ssl.feature_norm}:{_digest(rows)}"
    if key not in store.cache:
        store.cache[key] = feature_stats(cfg, store.views["none"], rows)
    return store.cache[key]


def run_graph(cfg: Any, store: Any, rows: np.ndarray, stats: tuple[Any, Any], progress: Any = None) -> Any:
    """The k-NN graph of ``rows`` (the training split): kept with the store, saved beside it.

    Built once per store, rows, statistics and search (:func:`hssal_ray.frozen.graph.build_graph`;
    exact up to ``ssl.graph_max_nodes`` nodes, or on a GPU with ``resources.use_gpu``); a saved
    graph that does not read back is built again.
    """
    import torch

    from hssal_ray.frozen import graph as g
    from hssal_ray.frozen.head import graph_features
    from hssal_ray.frozen.sharded import shard_count, sharded_graph

    device = "cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else None
    n = len(rows)
    shards = shard_count(cfg)
    method = "exact" if n <= cfg.ssl.graph_max_nodes or device == "cuda" or shards >= 2 else "ivf"
    spec = {
        "version": GRAPH_VERSION,
        "store": store.key or store.path,
        "rows": _digest(rows),
        "stats": _digest(stats[0].numpy(), stats[1].numpy()),
        "feature_norm": cfg.ssl.feature_norm,
        "k": cfg.ssl.graph_k,
        "method": method,
        "ivf": [g.LIST_ROWS, g.PROBE_ROWS, g.PCA_DIM, g.KMEANS_ITERS, g.SAMPLE_PER_LIST, g.NEAR_LISTS]
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
                cfg.ssl.graph_k, max(n - 1, 0)
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
                feats, rows, cfg.ssl.graph_k, max_exact=cfg.ssl.graph_max_nodes, device=device
            )
        secs = time.perf_counter() - t0
        (progress or log.info)(
            f"[hssal] k-NN graph of {n} training rows ({graph.method}, recall@{cfg.ssl.graph_k} "
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


def _load_head(cfg: Any, ckpt_dir: str, which: str, dim: int, num_classes: int) -> Any:
    from hssal_ray.frozen.head import build_head

    head = build_head(cfg, dim, num_classes)
    head.load_state_dict(load_weights(ckpt_dir, which))
    return head.eval()


def train(ctx: Any, r: int, init_dir: str | None) -> dict[str, Any]:
    """Train round ``r``'s head; writes ``round_XXX/checkpoint/``; returns the train metrics."""
    from hssal_ray.frozen.head import train_head

    cfg = ctx.cfg
    store = store_of(ctx)
    labeled = LabeledSet.load(ctx.run_dir)
    lab_table = ctx.labeled_rows(labeled)
    lab_rows = store.rows_of(lab_table.column("sample_id"))
    labels = lab_table.column("label").to_numpy()
    ok = ~store.missing[lab_rows]  # a row without features cannot be trained on
    lab_rows, labels = lab_rows[ok], labels[ok]
    pool = ctx.pool_rows(labeled)
    all_pool = store.rows_of(pool.column("sample_id"))
    keep = ~store.missing[all_pool]
    pool_rows = all_pool[keep]
    truth = pool.column("label").to_numpy(zero_copy_only=False)[keep]
    train_rows = _rows(store, ctx.split("train"))
    stats = run_stats(cfg, store, train_rows)
    init = warm_start_of(init_dir) if init_dir is not None else None
    ssl_on = ssl_active(cfg, len(pool_rows), r)
    graph = None
    if ssl_on and cfg.ssl.pseudo_labels == "graph":
        graph = run_graph(cfg, store, train_rows, stats, progress=ctx.progress)
    state, metrics = train_head(
        cfg,
        store.views,
        lab_rows,
        labels,
        pool_rows,
        truth,
        len(ctx.catalog.class_names),
        stats_rows=train_rows,
        seed=derive_seed(cfg.seed, r, "train"),
        init=init,
        ssl_on=ssl_on,
        progress=True,
        stats=stats,
        graph=graph,
    )
    metrics["ema_initial_weight"] = round_ema_initial_weight(cfg, state)
    meta = checkpoint_meta(state, r, metrics, regime="frozen")
    write_checkpoint(state, _io.join(round_dir(ctx.run_dir, r), "checkpoint"), meta)
    return metrics


def evaluate(ctx: Any, r: int) -> dict[str, Any]:
    """Test-split accuracy of the evaluation head (and of the other weights, as a diagnostic)."""
    from hssal_ray.frozen.infer import predict_views

    cfg = ctx.cfg
    store = store_of(ctx)
    test = ctx.split(cfg.data.eval_split)
    rows = store.rows_of(test.column("sample_id"))
    y = test.column("label").to_numpy(zero_copy_only=False)
    ok = ~store.missing[rows]
    tta = cfg.ssl.tta_views
    ckpt = _io.join(round_dir(ctx.run_dir, r), "checkpoint")
    nc = len(ctx.catalog.class_names)
    other = "online" if cfg.ssl.eval_model == "ema" else "ema"
    pred = predict_views(_load_head(cfg, ckpt, cfg.ssl.eval_model, store.dim, nc), store.views, rows[ok], tta)
    alt = predict_views(_load_head(cfg, ckpt, other, store.dim, nc), store.views, rows[ok], tta)
    pred, alt = pred.argmax(1), alt.argmax(1)
    return classification_metrics(y[ok], pred, nc, other=alt, eval_model=cfg.ssl.eval_model)


def score(ctx: Any, r: int, out_path: str) -> None:
    """Scores of the training split (pool and labeled set) with the evaluation head: ``scores.parquet``.

    Written block by block (:func:`write_scores_of`), renamed into place when whole; with
    ``resources.store_shards >= 2`` a directory of parts written by shard actors.
    """
    from hssal_ray.frozen.sharded import shard_count, sharded_score

    cfg = ctx.cfg
    store = store_of(ctx)
    rows = _rows(store, ctx.scored_rows())
    nc = len(ctx.catalog.class_names)
    head = _load_head(
        cfg, _io.join(round_dir(ctx.run_dir, r), "checkpoint"), cfg.ssl.eval_model, store.dim, nc
    )
    if shard_count(cfg) >= 2 and len(rows):
        sharded_score(cfg, store, rows, head, nc, out_path, shard_count(cfg))
        return
    fs, inner = _io.resolve_fs(out_path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:  # parts left by an image-level run
        _io.remove(out_path)
    write_scores_of(cfg, store, head, rows, out_path, nc)


def write_scores_of(
    cfg: Any, store: Any, head: Any, rows: np.ndarray, out_path: str, num_classes: int
) -> int:
    """Score store rows ``rows`` with ``head`` into the Parquet file ``out_path``; returns the rows.

    Block by block (:func:`hssal_ray.frozen.head.score_rows`, one row group each), renamed into
    place when whole; no rows still give a file with the contract's columns. The strong view is
    scored only when the query reads it (:func:`hssal_ray.rounds.scores_strong_view`), as on the
    image-level path, so both write the same columns. The embedding column
    is packed (one ``fixed_size_binary`` value of float16 bytes per row,
    :func:`hssal_ray.query.scores_table.packed_array`): as a Parquet list, its 1,280 values a row
    took most of a 1M-row round writing and reading it.
    """
    from hssal_ray.frozen.infer import score_rows
    from hssal_ray.query.scores_table import ScoresWriter

    rows = np.asarray(rows, dtype=np.int64)
    strong_on = scores_strong_view(cfg)
    with ScoresWriter(out_path) as out:
        blocks = score_rows(head, store.views, rows, cfg.ssl.tta_views, SCORE_BLOCK_ROWS, strong=strong_on)
        for s, probs, strong, emb in blocks:
            ids = store.id_array.take(pa.array(rows[s : s + len(probs)]))
            norms = np.ones(len(probs), np.float32)  # the embeddings are unit rows (u_badge's ||h||)
            out.write(
                scores_table(ids, emb, probs, strong, cfg.ssl.p_cutoff, emb_norms=norms, pack_embeddings=True)
            )
        if out.rows == 0:  # nothing to score: the file still has the contract's columns
            out.write(empty_scores_table(store.dim, num_classes, strong_on, pack_embeddings=True))
        return int(out.rows)
