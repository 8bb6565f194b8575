"""The frozen path beyond one machine: graph and scores on shard actors of a 2-node Ray cluster.

A small store (on a path both nodes read) is processed by :mod:`hssal_ray.frozen.sharded` through
the rounds' own entry points (``resources.store_shards=2``); the merged graph must equal the
single-machine exact graph and the scores the single-machine scores file, row for row, with one
shard actor killed in each (it is restarted with its rows and its call retried); shards that keep
dying, or cannot start, end the stage with one clear error.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from hssal_ray import faults
from hssal_ray.config import load_config
from hssal_ray.errors import ActorPoolError, ConfigError
from hssal_ray.frozen.graph import build_graph
from hssal_ray.frozen.head import build_head, graph_features
from hssal_ray.frozen.sharded import sharded_graph, sharded_score
from hssal_ray.frozen.split_cache import run_graph, run_stats
from hssal_ray.frozen.store import open_store, view_names, write_arrays
from hssal_ray.learners.frozen import FrozenLearner
from hssal_ray.query import load_pool
from hssal_ray.state import round_dir
from tests.integration.test_multinode import actor_nodes, local_cluster

pytestmark = pytest.mark.ray

N, D, NC = 700, 24, 4


def _store(path: Path) -> str:
    rng = np.random.default_rng(0)
    y = rng.integers(0, NC, N)
    centres = rng.normal(size=(NC, D))
    clean = centres[y] + 0.7 * rng.normal(size=(N, D))
    blocks = {v: (clean + 0.2 * rng.normal(size=(N, D))).astype(np.float16) for v in view_names(2)}
    blocks["none"] = clean.astype(np.float16)
    views = view_names(2)
    ids = [f"img{i:05d}" for i in range(N)]
    meta = {"key": "sharded-test", "views": list(views), "rows": N, "complete": True}
    write_arrays(str(path), ids, [blocks], views, meta=meta)
    return str(path)


def _learner(cfg, run_dir: Path, store, scored: pa.Table) -> FrozenLearner:
    run = types.SimpleNamespace(
        cfg=cfg,
        run_dir=str(run_dir),
        catalog=types.SimpleNamespace(class_names=[f"c{i}" for i in range(NC)]),
        scored_rows=lambda *_: scored,
    )
    return FrozenLearner(run, store=store)


def test_sharded_graph_and_scores_equal_the_single_machine_path(tmp_path: Path, monkeypatch) -> None:
    import ray

    over = [
        "ssl.finetune=frozen",
        "frozen.embed_views=2",
        "frozen.tta_views=1",
        "frozen.graph_k=6",
        "frozen.pseudo_labels=graph",
        "query.uncertainty=committee",
    ]
    local_cfg = load_config(None, over)
    shard_cfg = load_config(None, [*over, "resources.store_shards=2"])
    store = open_store(_store(tmp_path / "emb"))
    rows = np.arange(0, N, 2, dtype=np.int64)[::-1].copy()  # the training split: any order of rows
    stats = run_stats(local_cfg, store, rows)
    feats = graph_features(local_cfg, store.views, rows, stats)
    ref = build_graph(feats, rows, 6, max_exact=10**6)

    torch.manual_seed(0)
    head = build_head(local_cfg, D, NC, stats=stats)
    ckpt = Path(round_dir(str(tmp_path), 1)) / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / "ema.safetensors"))
    rng = np.random.default_rng(1)  # the round's committee: teacher and smoothed labels of half the rows
    held = rng.permutation(N)[: N // 2]
    members = {
        name: rng.dirichlet(np.ones(NC), size=len(held)).astype(np.float16) for name in ("teacher", "graph")
    }
    FrozenLearner._write_committee(round_dir(str(tmp_path), 1), {"rows": held, **members})
    scored = pa.table({"sample_id": pa.array([f"img{i:05d}" for i in range(N - 1, -1, -3)])})
    local_out = tmp_path / "local.parquet"
    _learner(local_cfg, tmp_path, store, scored).score(1, str(local_out))

    with local_cluster() as (cluster, _):
        ray.init(address=cluster.address)
        store.cache.clear()
        # one shard actor dies (os._exit) at its second search, one at its scoring call
        monkeypatch.setenv(faults.KILL_SHARD_ENV, f"batch=2,marker={tmp_path / 'kill_graph'}")
        graph = run_graph(shard_cfg, store, rows, stats)
        monkeypatch.setenv(faults.KILL_SHARD_ENV, f"batch=1,marker={tmp_path / 'kill_score'}")
        shard_out = tmp_path / "round_001" / "scores.parquet"
        _learner(shard_cfg, tmp_path, store, scored).score(1, str(shard_out))
        monkeypatch.setenv(faults.KILL_SHARD_ENV, f"batch=1,times=99,marker={tmp_path / 'kill_all'}")
        with pytest.raises(ActorPoolError, match="the sharded k-NN graph: its Ray actors kept dying"):
            sharded_graph(shard_cfg, store, rows, stats, 2)
        monkeypatch.delenv(faults.KILL_SHARD_ENV)
        gone, out = types.SimpleNamespace(path=str(tmp_path / "gone")), tmp_path / "s_out"
        with pytest.raises(
            ActorPoolError, match=r"the sharded scoring: its Ray actors failed to start.*gone"
        ):
            sharded_score(shard_cfg, gone, rows, head, NC, str(out), 2)
        assert not out.exists() and not list(tmp_path.glob(".s_out.*")), "a failed scoring leaves no parts"
        nodes = set(actor_nodes("StoreShard"))
        gpu_cfg = load_config(None, [*over, "resources.store_shards=2", "resources.use_gpu=true"])
        with pytest.raises(ConfigError, match="has no GPU"):  # not a wait for GPUs that never come
            sharded_graph(gpu_cfg, store, rows, stats, 2)
    assert len(nodes) >= 2, "the shard actors ran on one node"
    for marker in ("kill_graph", "kill_score"):  # each fault fired once, and the results below still hold
        assert len((tmp_path / marker).read_text().splitlines()) == 1

    assert graph.method == "exact" and np.array_equal(graph.rows, ref.rows)
    np.testing.assert_array_equal(graph.idx, ref.idx)
    np.testing.assert_allclose(graph.cos, ref.cos, rtol=0, atol=1e-6)
    assert list((tmp_path / "emb").glob("graph-*.npz")), "the sharded graph is saved beside the store"

    assert shard_out.is_dir() and len(list(shard_out.glob("part-*.parquet"))) == 2
    a, b = load_pool(str(local_out)), load_pool(str(shard_out))
    assert list(a.ids) == list(b.ids)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
    assert a.scores.keys() == b.scores.keys() and "u_committee" in a.scores
    assert not np.allclose(a.scores["u_committee"], a.scores["u_margin"], atol=1e-3)
    for k in a.scores:
        np.testing.assert_allclose(a.scores[k], b.scores[k], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.confident, b.confident)
