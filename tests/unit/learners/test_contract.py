"""Both learners keep the one contract the stages rely on (:class:`hssal_ray.learners.base.Learner`):
the checkpoint's files and meta, the warm start's global step, the evaluation's keys, the scores
file's rows and columns (the same on both paths), and the cold start's pool.

The frozen learner runs on a synthetic embedding store without Ray; the image-level learner needs
Ray Data for its decode stream (``resources.executor=driver``: no Ray Train worker group) and is
marked slow. Between them, the scores' columns are compared without Ray: the image path's scoring
actor class in this process against the frozen learner's file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hssal_ray import _io
from hssal_ray.config import config_to_dict, load_config
from hssal_ray.errors import ConfigError
from hssal_ray.frozen.store import EmbeddingStore, view_names
from hssal_ray.learners import learner_class
from hssal_ray.learners.frozen import FrozenLearner
from hssal_ray.learners.image import ImageLearner
from hssal_ray.loop.context import RunContext
from hssal_ray.query import load_pool
from hssal_ray.rounds import scores_strong_view, write_checkpoint
from hssal_ray.state import LabeledSet, round_dir
from tests.unit._run_context import run_context

STEPS = 4
SMALL = [
    "data.synthetic_classes=3",
    "data.synthetic_per_class=6",
    "data.image_size=16",
    "data.synthetic_size=16",
    "loop.report=false",
    "ssl.model=hssal_small_cnn",
    f"ssl.steps_per_round={STEPS}",
    "ssl.batch_size=4",
    "ssl.uratio=1",
    "ssl.eval_batch_size=8",
]
FROZEN = ["ssl.finetune=frozen", "frozen.embed_views=1"]
DIM = 8


def _ctx(tmp_path, *extra: str) -> RunContext:
    return run_context(tmp_path, SMALL, *extra)


def _frozen_ctx(tmp_path, *extra: str) -> RunContext:
    """A frozen run whose embedding store is synthetic: one cluster of features per class."""
    ctx = _ctx(tmp_path, *FROZEN, *extra)
    table = ctx.catalog.table
    ids = table.column("sample_id").to_pylist()
    y = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(int(y.max()) + 1, DIM))
    views = {v: (centres[y] + rng.normal(size=(len(ids), DIM))).astype(np.float16) for v in view_names(1)}
    store = EmbeddingStore(path=str(tmp_path / "emb"), ids=ids, views=views, missing=np.zeros(len(ids), bool))
    assert isinstance(ctx.learner, FrozenLearner)
    ctx.learner.store = store
    return ctx


def _label_some(ctx: RunContext) -> None:
    first = ctx.split("train").slice(0, 6)
    labels = dict(zip(first.column("sample_id").to_pylist(), first.column("label").to_pylist(), strict=True))
    LabeledSet().with_round(0, labels, "oracle").save(ctx.run_dir)


def _check_contract(ctx: RunContext) -> list[str]:
    """Train two rounds, evaluate, score and cold-start with ``ctx.learner``; returns the scores' columns."""
    learner = ctx.learner
    train = ctx.split("train")
    _label_some(ctx)

    m0 = learner.train(0, None)
    ckpt0 = _io.join(round_dir(ctx.run_dir, 0), "checkpoint")
    assert {"ema.safetensors", "model.safetensors", "meta.json", "train_state.pt"} <= set(os.listdir(ckpt0))
    meta = _io.read_json(_io.join(ckpt0, "meta.json"))
    assert (meta["step"], meta["global_step"], meta["round"]) == (STEPS, STEPS, 0)
    assert {"loss", "sup_loss", "step", "global_step", "ema_initial_weight"} <= set(m0)
    m1 = learner.train(1, os.path.abspath(ckpt0))  # the warm start continues the EMA's step count
    assert m1["global_step"] == 2 * STEPS

    ev = learner.evaluate(1)
    test_rows = ctx.split(ctx.cfg.data.eval_split).num_rows
    assert ev["test_samples"] == test_rows and 0.0 <= ev["test_accuracy"] <= 1.0
    assert ev["test_accuracy_ema"] == ev["test_accuracy"] and 0.0 <= ev["test_accuracy_online"] <= 1.0

    out = _io.join(round_dir(ctx.run_dir, 1), "scores.parquet")
    learner.score(1, out)
    pool = load_pool(out)
    assert sorted(pool.ids) == sorted(ctx.scored_rows().column("sample_id").to_pylist())
    assert pool.probs.shape == (len(pool.ids), 3) and np.allclose(pool.probs.sum(1), 1, atol=1e-3)

    source = learner.embedding_source()  # the query's embeddings: the store's rows, or the file's column
    if isinstance(learner, FrozenLearner):
        rows = source(pool.ids)
        assert np.array_equal(np.asarray(rows).view(np.uint16), pool.embeddings.view(np.uint16))
    else:
        assert source is None

    cold = learner.cold_start_pool()
    assert sorted(cold.ids) == sorted(train.column("sample_id").to_pylist())
    norms = np.linalg.norm(np.asarray(cold.embeddings, dtype=np.float32), axis=1)
    assert np.allclose(norms, 1, atol=1e-2)
    return pq.read_schema(out if os.path.isfile(out) else os.path.join(out, os.listdir(out)[0])).names


def test_make_learner_picks_the_path_once_from_the_config(tmp_path) -> None:
    assert learner_class(load_config(None, FROZEN)) is FrozenLearner
    for regime in ("full", "partial"):
        assert learner_class(load_config(None, [f"ssl.finetune={regime}"])) is ImageLearner
    assert isinstance(_ctx(tmp_path).learner, ImageLearner)
    assert _ctx(tmp_path).learner.embedding_source() is None  # its query reads the scores file's column
    bundles = [{"CPU": 2.0}, {"CPU": 1.0}]
    image = load_config(
        None, ["resources.num_workers=2", "resources.cpus_per_worker=2", "resources.score_actors=1"]
    )
    assert ImageLearner.trial_footprint(image, bundles) == {"CPU": 3.0 + 1.0 + 4.0, "GPU": 0.0}
    assert FrozenLearner.trial_footprint(load_config(None, FROZEN), bundles) == {"CPU": 4.0, "GPU": 0.0}


def test_frozen_learner_keeps_the_contract(tmp_path) -> None:
    _check_contract(_frozen_ctx(tmp_path))


@pytest.mark.parametrize("query", [[], ["query.ssl_aware=true"], ["query.uncertainty=disagreement"]])
def test_both_paths_write_the_same_score_columns(tmp_path, query: list[str]) -> None:
    """The one rule (:func:`scores_strong_view`) decides the columns on both paths."""
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl.train_loop import build_train_state

    frozen = _frozen_ctx(tmp_path / "frozen", *query)
    _label_some(frozen)
    frozen.learner.train(0, None)
    out = _io.join(round_dir(frozen.run_dir, 0), "scores.parquet")
    frozen.learner.score(0, out)
    frozen_cols = pq.read_schema(out).names

    cfg = load_config(None, [*SMALL, *query])
    ckpt = str(tmp_path / "image" / "checkpoint")
    write_checkpoint(build_train_state(cfg, 3, torch.device("cpu"), 1), ckpt, {"step": 0})
    rng = np.random.default_rng(0)
    batch = {"sample_id": np.array(["a", "b"], dtype=object)}
    views = ("none", "strong") if scores_strong_view(cfg) else ("none",)  # what score_pool decodes
    for v in views:
        batch[f"x_{v}"] = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    image_cols = Scorer(ckpt, config_to_dict(cfg), num_classes=3)(batch).column_names
    assert image_cols == frozen_cols
    assert ("confident" in frozen_cols) == ("u_disagreement" in frozen_cols) == bool(query)


@pytest.fixture
def ray_local() -> Iterator[None]:
    import ray

    from hssal_ray._ray import init_private_ray

    init_private_ray(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_image_learner_keeps_the_same_contract(tmp_path, ray_local: None) -> None:
    ctx = _ctx(tmp_path / "image", "resources.executor=driver")
    image_cols = _check_contract(ctx)
    frozen_cols = _check_contract(_frozen_ctx(tmp_path / "frozen"))
    assert image_cols == frozen_cols


def test_frozen_learner_keeps_the_contract_with_graph_labels_on_the_ivf_graph(tmp_path) -> None:
    """graph_max_nodes below the split: the graph is built by the IVF search (its settings key the cache)."""
    ctx = _frozen_ctx(tmp_path, "frozen.pseudo_labels=graph", "frozen.graph_k=3", "frozen.graph_max_nodes=2")
    _check_contract(ctx)


def test_frozen_learner_keeps_the_round_committee_and_scores_it(tmp_path) -> None:
    """``query.uncertainty=committee``: the round keeps its pool's teacher and smoothed labels, and the
    scores' ``u_committee`` is their consensus margin with the student (a labeled row: its own margin)."""
    from safetensors.numpy import load

    from hssal_ray.learners.frozen import COMMITTEE_FILE
    from hssal_ray.query.uncertainty import committee, margin

    ctx = _frozen_ctx(
        tmp_path, "frozen.pseudo_labels=graph", "frozen.graph_k=3", "query.uncertainty=committee"
    )
    _label_some(ctx)
    ctx.learner.train(0, None)
    rdir = round_dir(ctx.run_dir, 0)
    kept = load(_io.read_bytes(_io.join(rdir, COMMITTEE_FILE)))
    store = ctx.learner.store
    pool_rows = store.rows_of(ctx.pool_rows(LabeledSet.load(ctx.run_dir)).column("sample_id"))
    assert sorted(kept["rows"].tolist()) == sorted(pool_rows.tolist())
    assert kept["teacher"].shape == kept["graph"].shape == (len(pool_rows), 3)
    np.testing.assert_allclose(kept["graph"].astype(np.float32).sum(1), 1.0, atol=1e-2)

    out = _io.join(rdir, "scores.parquet")
    ctx.learner.score(0, out)
    pool = load_pool(out)
    rows = store.rows_of(pool.ids)
    where = {int(r): i for i, r in enumerate(kept["rows"])}
    in_pool = np.array([int(r) in where for r in rows])
    assert in_pool.sum() == len(pool_rows) and (~in_pool).sum() == 6  # the labeled rows are scored too
    at = [where[int(r)] for r in rows[in_pool]]
    members = [kept["teacher"][at].astype(np.float32), kept["graph"][at].astype(np.float32)]
    want = committee(pool.probs[in_pool], members)
    np.testing.assert_allclose(pool.scores["u_committee"][in_pool], want, atol=1e-4)
    np.testing.assert_allclose(pool.scores["u_committee"][~in_pool], margin(pool.probs[~in_pool]), atol=1e-5)
    assert not np.allclose(pool.scores["u_committee"][in_pool], pool.scores["u_margin"][in_pool], atol=1e-3)


def test_the_committee_is_kept_only_when_the_query_reads_it() -> None:
    from hssal_ray.rounds import scores_committee

    graph = [*FROZEN, "frozen.pseudo_labels=graph"]
    assert scores_committee(load_config(None, [*graph, "query.uncertainty=committee"]))
    late = [*graph, "query.late_uncertainty=committee"]
    assert scores_committee(load_config(None, [*late, "query.pick=auto"]))
    assert scores_committee(load_config(None, [*late, "query.pick=auto_local"]))
    assert not scores_committee(load_config(None, [*late, "query.pick=uncertain"]))  # never read
    assert not scores_committee(load_config(None, graph))


def test_pool_sample_scores_the_labeled_rows_and_the_rounds_draw_and_the_query_picks_among_them(
    tmp_path,
) -> None:
    """``query.pool_sample``: the score stage scores every labeled row and that round's seeded draw of the
    pool (the same rows again when the round is rerun, others the next round), says so, and the round's
    query (the product's stage) picks only scored rows."""
    from hssal_ray.loop.stages import query as query_stage
    from hssal_ray.state import RunState

    ctx = _frozen_ctx(
        tmp_path, "query.pool_sample=4", "query.budget=2", "loop.initial_labeled=2", "query.strategy=margin"
    )
    lines: list[str] = []
    ctx.progress = lines.append
    _label_some(ctx)
    labeled = set(LabeledSet.load(ctx.run_dir).ids)
    train = set(ctx.split("train").column("sample_id").to_pylist())
    assert len(train) - len(labeled) > 4
    ctx.learner.train(0, None)
    out = _io.join(round_dir(ctx.run_dir, 0), "scores.parquet")
    ctx.learner.score(0, out)
    scored = set(load_pool(out).ids)
    assert labeled <= scored and len(scored - labeled) == 4 and scored <= train
    assert lines == [
        f"[hssal] round 0: scoring 4 of the {len(train) - len(labeled)} unlabeled rows "
        f"(query.pool_sample=4) and the {len(labeled)} labeled"
    ]
    again = set(ctx.scored_rows(0).column("sample_id").to_pylist())
    assert again == scored
    assert set(ctx.scored_rows(1).column("sample_id").to_pylist()) != scored
    assert set(ctx.scored_rows().column("sample_id").to_pylist()) == train  # no round: every row

    cold = ctx.cold_start_rows()  # what the image path's cold start scores: a seeded draw of the split
    assert cold.num_rows == 4 and set(cold.column("sample_id").to_pylist()) <= train
    assert cold.equals(ctx.cold_start_rows()) and lines[-1].startswith("[hssal] cold start: scoring 4 of the")
    small = _frozen_ctx(tmp_path / "small", "query.pool_sample=4", "loop.initial_labeled=5")
    with pytest.raises(ConfigError, match="query.pool_sample: 4 unlabeled rows .* fewer than the 5"):
        small.cold_start_rows()

    query_stage.run(ctx, RunState(round=0, stage="query"), 0.0)
    with open(_io.join(round_dir(ctx.run_dir, 0), "query.csv"), newline="") as f:
        picked = {row["sample_id"] for row in csv.DictReader(f)}
    assert len(picked) == 2 and picked <= scored - labeled
