"""The frozen path beyond one machine: the graph build and the round's scoring as Ray actors on shards.

With ``resources.store_shards = S >= 2`` (a pool whose graph features or scoring do not fit one
machine), :func:`~hssal_ray.frozen.split_cache.run_graph` and the frozen learner's
:meth:`~hssal_ray.learners.frozen.FrozenLearner.score` run here. ``S`` :class:`StoreShard` actors
(one CPU each, spread over the cluster's nodes) open the store themselves (its memory-mapped
views on a shared path, or a URI), so the driver never reads the features:

- **graph**: shard ``j`` holds the graph features (float32 unit rows) of the nodes of row range
  ``j`` only (:func:`hssal_ray.frozen.shards.shard_bounds`). For each shard ``i`` in turn, its
  features go (through the object store, never the driver) to every shard, which returns its own
  ``k`` best neighbours of each of those nodes; the driver merges the ``S`` lists
  (:func:`~hssal_ray.frozen.shards.merge_topk`). The result is the exact k-NN graph, equal to the
  single-machine exact search; the driver holds the graph (``n * k`` similarities and indices) and
  one shard's candidate lists. With ``resources.use_gpu`` each graph actor also takes a GPU (an
  equal share when the cluster has fewer GPUs than shards: :func:`~hssal_ray.frozen.shards.gpus_per_shard`),
  keeps its rows there and searches in float32 on it (TF32 off: still exact).
- **scores**: the scored rows are split into ``S`` contiguous ranges; shard ``j`` scores range
  ``j`` with the evaluation head (:func:`~hssal_ray.frozen.head.score_rows`) and writes
  ``part-0000j.parquet``. The parts are written into a temporary directory that is renamed into
  place when all are written: the scores "file" is the directory of parts (the contract's
  multi-part form, read by :func:`hssal_ray.query.load_pool` in part order = row order).

The math is :mod:`hssal_ray.frozen.shards` (unit-tested without Ray); this module only places it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from hssal_ray import _io

__all__ = ["StoreShard", "sharded_graph", "sharded_score", "shard_count"]

log = logging.getLogger(__name__)


def shard_count(cfg: Any) -> int:
    """``resources.store_shards`` (0 or 1: the single-machine path)."""
    return int(getattr(cfg.resources, "store_shards", 0) or 0)


class StoreShard:
    """One shard's work on a store it opens itself (a Ray actor: :func:`_actors`).

    Args:
        store_path: The store directory (shared by every node, or a URI).
        cfg: The experiment config (feature normalisation, TTA views, the head's shape).
        nodes: A graph shard's ``(rows, start, stats, gpu)``: the graph features of store rows ``rows``
            (nodes ``start..``) are loaded here, on the GPU too with ``gpu``; none for a scoring shard.
        fault_kill: Testing hook (:func:`hssal_ray.faults.kill_actor`, its ``batch`` counted in calls of
            :meth:`search` and :meth:`score`).

    A shard that dies (node lost, OOM kill) is restarted, its constructor loading its rows again, and its
    unfinished calls are retried (:data:`~hssal_ray.scoring.ACTOR_MAX_RESTARTS` /
    :data:`~hssal_ray.scoring.ACTOR_MAX_TASK_RETRIES`); both calls are pure (a retried :meth:`score`
    rewrites its own part, renamed into place when whole), so a retry gives the same graph and scores.
    """

    def __init__(
        self, store_path: str, cfg: Any, nodes: tuple[Any, ...] | None = None, fault_kill: str | None = None
    ) -> None:
        from hssal_ray.frozen.store import open_store

        self.cfg = cfg
        self.store = open_store(store_path)
        self.z: np.ndarray | None = None
        self.z_dev: Any = None  # the same rows on the GPU, for a graph actor given one
        self.device: str | None = None
        self.start = 0
        self.calls = 0
        self.fault_kill = fault_kill  # testing hook: hssal_ray.faults.kill_actor, per call
        if nodes is not None:  # in the constructor, so that a restarted actor has its rows again
            self._load_nodes(*nodes)

    def _load_nodes(self, rows: np.ndarray, start: int, stats: tuple[Any, Any], gpu: bool = False) -> None:
        """Keep the graph features of store rows ``rows`` (nodes ``start..``).

        ``gpu``: the actor was given a GPU (``resources.use_gpu``): the rows are also copied to it
        once and every :meth:`search` runs there.
        """
        from hssal_ray.frozen.head import graph_features

        feats = graph_features(self.cfg, self.store.views, rows, stats)
        self.z = feats(np.arange(len(rows)))
        self.start = int(start)
        if gpu:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    "a graph shard actor was given a GPU (resources.use_gpu) but torch sees no CUDA "
                    f"device on its node (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                )
            self.device = "cuda"
            self.z_dev = torch.from_numpy(np.ascontiguousarray(self.z, dtype=np.float32)).to(self.device)

    def _call(self) -> None:
        from hssal_ray import faults

        self.calls += 1
        faults.kill_actor(self.calls, self.fault_kill, "store shard")

    def features(self) -> np.ndarray:
        """This shard's node features (sent to the other shards through the object store)."""
        assert self.z is not None, "a graph shard: constructed with its nodes"
        return self.z

    def search(self, q: np.ndarray, q_start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's ``k`` best neighbours of query nodes ``q`` (:func:`.shards.block_topk`)."""
        from hssal_ray.frozen.shards import block_topk

        assert self.z is not None, "a graph shard: constructed with its nodes"
        self._call()
        x = self.z if self.z_dev is None else self.z_dev
        return block_topk(q, q_start, x, self.start, k, device=self.device)

    def score(
        self,
        head_state: dict[str, Any],
        num_classes: int,
        rows: np.ndarray,
        part: str,
        members: list[np.ndarray] | None = None,
    ) -> int:
        """Score store rows ``rows`` with the head of ``head_state`` into the Parquet file ``part``."""
        from hssal_ray.frozen.head import build_head
        from hssal_ray.frozen.scores import write_scores_of

        self._call()
        head = build_head(self.cfg, self.store.dim, num_classes)
        head.load_state_dict(head_state)
        return write_scores_of(self.cfg, self.store, head.eval(), rows, part, num_classes, members)


def _actors(
    cfg: Any, store_path: str, count: int, nodes: list[tuple[Any, ...]] | None = None, gpu: bool = False
) -> tuple[list[Any], float]:
    """``count`` :class:`StoreShard` actors, one CPU each, spread over the nodes, and their GPU share.

    ``nodes``: each graph shard's constructor ``nodes`` (:class:`StoreShard`). ``gpu``: each also takes a
    GPU, or an equal share of the cluster's (:func:`.shards.gpus_per_shard`); the share is 0 otherwise.
    Restarts are bounded as the other actor pools' (:mod:`hssal_ray.scoring`).
    """
    import ray

    from hssal_ray import faults
    from hssal_ray._ray import ensure_ray
    from hssal_ray.frozen.shards import gpus_per_shard
    from hssal_ray.scoring import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES

    ensure_ray(cfg.resources)
    gpus = gpus_per_shard(float(ray.cluster_resources().get("GPU", 0.0)), count) if gpu else 0.0
    cls = ray.remote(
        num_cpus=1,
        num_gpus=gpus,
        scheduling_strategy="SPREAD",
        max_restarts=ACTOR_MAX_RESTARTS,
        max_task_retries=ACTOR_MAX_TASK_RETRIES,
    )(StoreShard)
    spec = faults.shard_spec()
    args = [(None if nodes is None else (*nodes[i], gpus > 0)) for i in range(count)]
    return [cls.remote(store_path, cfg, a, spec) for a in args], gpus


_SHARD_KNOBS = "resources.store_shards (more shards, fewer rows each)"
"""What sizes a :class:`StoreShard`'s share (named by :func:`~hssal_ray.scoring.pool_failures`)."""
_SHARD_HOLDS = "its shard's rows of the store (the graph's features, or the scored rows' views)"


def _kill(actors: list[Any]) -> None:
    import ray

    for a in actors:
        ray.kill(a)


def sharded_graph(cfg: Any, store: Any, rows: np.ndarray, stats: tuple[Any, Any], shards: int) -> Any:
    """The exact k-NN graph of store rows ``rows`` built by ``shards`` actors (see the module doc)."""
    import ray

    from hssal_ray.frozen.graph import KnnGraph
    from hssal_ray.frozen.shards import merge_topk, shard_bounds
    from hssal_ray.scoring import pool_failures

    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    k = min(cfg.frozen.graph_k, max(n - 1, 0))
    if k < 1:
        return KnnGraph(rows=rows, cos=np.zeros((n, 0), np.float32), idx=np.zeros((n, 0), np.int64))
    bounds = shard_bounds(n, shards)
    nodes = [(rows[s:e], s, stats) for s, e in bounds]
    t0 = time.perf_counter()
    actors, gpus = _actors(cfg, store.path, len(bounds), nodes, gpu=cfg.resources.use_gpu)
    again = "Nothing of this graph is saved; rerunning the command builds it again."
    try:
        with pool_failures("the sharded k-NN graph", again, _SHARD_KNOBS, _SHARD_HOLDS):
            cos = np.empty((n, k), np.float32)
            idx = np.empty((n, k), np.int64)
            for a, (s, e) in zip(actors, bounds, strict=True):
                q = a.features.remote()  # stays in the object store: the shards fetch it, the driver does not
                parts = ray.get([b.search.remote(q, s, k) for b in actors])
                cos[s:e], idx[s:e] = merge_topk(parts, k)
                del q
    finally:
        _kill(actors)
    where = f" ({gpus:g} GPU each)" if gpus else ""
    seconds = time.perf_counter() - t0
    log.info("sharded k-NN graph: %d nodes on %d shards%s in %.1f s", n, len(bounds), where, seconds)
    return KnnGraph(rows=rows, cos=cos, idx=idx, method="exact")


def sharded_score(
    cfg: Any,
    store: Any,
    rows: np.ndarray,
    head: Any,
    num_classes: int,
    out_path: str,
    shards: int,
    members: list[np.ndarray] | None = None,
) -> int:
    """Score store rows ``rows`` on ``shards`` actors into the parts directory ``out_path``; returns rows.

    ``members``: the committee's other members, row-aligned with ``rows`` (each actor gets its slice).
    """
    import ray

    from hssal_ray.frozen.shards import shard_bounds
    from hssal_ray.scoring import pool_failures

    rows = np.asarray(rows, dtype=np.int64)
    bounds = shard_bounds(len(rows), shards)
    uri = _io.is_uri(out_path)
    if uri:  # an object store has no rename: the parts go straight to the target, emptied first
        _io.remove(out_path)
        tmp = out_path
    else:
        parent = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.", suffix=".parts", dir=parent)
    state = ray.put({k: v.detach().cpu() for k, v in head.state_dict().items()})
    actors, _ = _actors(cfg, store.path, len(bounds))
    again = "No scores file is written; rerunning the command scores this round again."
    try:
        with pool_failures("the sharded scoring", again, _SHARD_KNOBS, _SHARD_HOLDS):
            done = ray.get(
                [
                    a.score.remote(
                        state,
                        num_classes,
                        rows[s:e],
                        _io.join(tmp, f"part-{i:05d}.parquet"),
                        None if members is None else [m[s:e] for m in members],
                    )
                    for i, (a, (s, e)) in enumerate(zip(actors, bounds, strict=True))
                ]
            )
    except BaseException:
        if not uri:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _kill(actors)
    if not uri:
        if os.path.isdir(out_path):
            shutil.rmtree(out_path)
        elif os.path.exists(out_path):
            os.unlink(out_path)
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out_path)
    return int(sum(done))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
