"""The loop's stage functions, each on a real run context, with the model parts stubbed (no Ray).

Every stage writes its outputs, then advances ``state.json``; these tests check those contracts:
what a stage writes, what it hands the next one, and where the run's state goes.
"""

from __future__ import annotations

import csv
import os
import types

import numpy as np
import pytest

from hssal_ray import _io
from hssal_ray.config import load_config
from hssal_ray.errors import StateError
from hssal_ray.loop.context import RunContext
from hssal_ray.loop.metrics import read_metrics, update_metrics
from hssal_ray.loop.query_files import pending_query, read_query_ids, write_query
from hssal_ray.loop.stages import evaluate as evaluate_stage
from hssal_ray.loop.stages import init as init_stage
from hssal_ray.loop.stages import label as label_stage
from hssal_ray.loop.stages import query as query_stage
from hssal_ray.loop.stages import score as score_stage
from hssal_ray.loop.stages import train as train_stage
from hssal_ray.loop.stages.query import round_budget
from hssal_ray.oracle import HumanOracle, SimulatedOracle
from hssal_ray.query.scores_io import write_scores
from hssal_ray.state import LabeledSet, RunState, round_dir
from tests.unit._run_context import run_context

from .test_round_rules import SMALL as ROUND_RULES_SMALL

SMALL = [*ROUND_RULES_SMALL, "loop.report=false"]  # the tiny synthetic run of the round-rule tests


def _ctx(tmp_path, *extra: str) -> RunContext:
    return run_context(tmp_path, SMALL, *extra)


def _state(stage: str, r: int = 0) -> RunState:
    return RunState(round=r, stage=stage, config_sha="test")


# --------------------------------------------------------------------------- init and label


def test_init_writes_the_cold_start_batch_and_labels_it(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    assert isinstance(ctx.oracle, SimulatedOracle)
    state = _state("init")
    init_stage.run(ctx, state, 0.0)
    ids = read_query_ids(_io.join(ctx.run_dir, "cold_start"))
    assert len(ids) == 3
    labeled = LabeledSet.load(ctx.run_dir)
    truth = dict(
        zip(
            ctx.catalog.table.column("sample_id").to_pylist(),
            ctx.catalog.table.column("label").to_pylist(),
            strict=True,
        )
    )
    assert labeled.labels() == {s: truth[s] for s in ids}
    assert set(labeled.table.column("round_added").to_pylist()) == {0}
    saved = RunState.load(ctx.run_dir)
    assert saved is not None and (saved.round, saved.stage, saved.status) == (0, "train", "running")
    # idempotent: a rerun of the stage keeps the batch that was written
    init_stage.run(ctx, _state("init"), 0.0)
    assert read_query_ids(_io.join(ctx.run_dir, "cold_start")) == ids
    assert LabeledSet.load(ctx.run_dir).ids == labeled.ids


def test_label_stage_adds_the_answers_and_starts_the_next_round(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {train[0]: 0}, "oracle").save(ctx.run_dir)
    write_query(round_dir(ctx.run_dir, 0), train[1:3], [0.5, 0.25], None)
    state = _state("label", 0)
    label_stage.run(ctx, state, 0.0)
    assert (state.round, state.stage) == (1, "train")
    labeled = LabeledSet.load(ctx.run_dir)
    assert labeled.ids == train[:3]
    assert labeled.table.column("round_added").to_pylist() == [0, 1, 1]
    row = read_metrics(ctx.run_dir)[0]
    assert row["round"] == 0 and row["num_answered"] == 2 and "label" in row["wall_s"]


def test_human_oracle_pauses_then_takes_a_label_file(tmp_path) -> None:
    ctx = _ctx(tmp_path, "oracle.kind=human")
    assert isinstance(ctx.oracle, HumanOracle) and ctx.oracle.accepts_label_files
    state = _state("init")
    init_stage.run(ctx, state, 0.0)
    assert state.status == "awaiting_labels" and state.stage == "init"
    d, ids, round_added = pending_query(ctx.run_dir, state)
    assert round_added == 0 and len(ids) == 3 and d.endswith("cold_start")
    assert len(LabeledSet.load(ctx.run_dir)) == 0
    names = list(ctx.catalog.class_names)
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "label"])
        for s in ids:
            w.writerow([s, names[0]])
    label_stage.import_labels(ctx, state, str(answers))
    assert state.status == "running"
    label_stage.run(ctx, state, 0.0)
    assert state.stage == "train"
    assert LabeledSet.load(ctx.run_dir).labels() == {s: 0 for s in ids}
    with pytest.raises(StateError, match="is not waiting for labels"):
        label_stage.import_labels(ctx, state, str(answers))


def test_simulated_runs_take_no_label_files(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    write_query(_io.join(ctx.run_dir, "cold_start"), ["x"], None, None)
    state = RunState(stage="init", status="awaiting_labels")
    with pytest.raises(StateError, match="--labels only applies to runs with oracle.kind=human"):
        label_stage.import_labels(ctx, state, "whatever.csv")
    assert ctx.oracle.instructions("anywhere") == ""


# --------------------------------------------------------------------------- train, evaluate, score


def test_train_stage_warm_starts_and_writes_train_metrics(tmp_path, monkeypatch) -> None:
    ctx = _ctx(tmp_path)
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {train[0]: 1, train[1]: 2}, "oracle").save(ctx.run_dir)
    seen: dict = {}

    def fake_fit_round(cfg, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return types.SimpleNamespace(metrics={"loss": 0.5, "step": 4, "note": "not a number"})

    monkeypatch.setattr("hssal_ray.ssl.trainer.fit_round", fake_fit_round)
    state = _state("train", 1)
    train_stage.run(ctx, state, 0.0)
    assert seen["round_idx"] == 1
    assert seen["init_dir"] == os.path.abspath(_io.join(round_dir(ctx.run_dir, 0), "checkpoint"))
    assert seen["labeled"].column("sample_id").to_pylist() == train[:2]
    assert seen["labeled"].column("label").to_pylist() == [1, 2]  # the oracle's labels
    assert seen["pool"].num_rows == len(train) - 2
    m = _io.read_json(_io.join(round_dir(ctx.run_dir, 1), "train_metrics.json"))
    assert m["loss"] == 0.5 and m["step"] == 4 and "note" not in m
    assert m["stage_started_at"] <= m["stage_ended_at"]
    assert state.stage == "evaluate"


def _evaluated(tmp_path, monkeypatch, *extra: str) -> tuple[RunContext, RunState, list]:
    ctx = _ctx(tmp_path, *extra)
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {s: 0 for s in train[:3]}, "oracle").save(ctx.run_dir)
    _io.atomic_write_json(
        _io.join(round_dir(ctx.run_dir, 0), "train_metrics.json"), {"loss": 1.0, "mask_rate": 0.5, "x": 3}
    )
    monkeypatch.setattr(
        ctx.learner, "evaluate", lambda r: {"test_accuracy": 0.75, "test_accuracy_online": 0.5}
    )
    reports: list = []
    ctx.on_round = reports.append
    state = _state("evaluate", 0)
    state.history.append([0, "train", 2.0])
    evaluate_stage.run(ctx, state, 0.0)
    return ctx, state, reports


def test_evaluate_stage_writes_the_metrics_row(tmp_path, monkeypatch) -> None:
    ctx, state, reports = _evaluated(tmp_path, monkeypatch, "loop.rounds=2")
    (row,) = read_metrics(ctx.run_dir)
    n_train = ctx.split("train").num_rows
    assert row["num_labeled"] == 3 and row["label_fraction"] == pytest.approx(3 / n_train)
    assert row["test_accuracy"] == 0.75 and row["loss"] == 1.0 and row["mask_rate"] == 0.5
    assert "x" not in row  # only the known training figures are copied
    assert row["wall_s"]["train"] == 2.0 and "evaluate" in row["wall_s"]
    assert row["pool_remaining"] == n_train - 3 and row["final"] is False
    assert state.stage == "score" and state.status == "running"
    assert reports == [read_metrics(ctx.run_dir)]


def test_evaluate_stage_says_where_an_unlabeled_archive_gets_its_accuracy(tmp_path, monkeypatch) -> None:
    ctx = _ctx(tmp_path, "loop.rounds=2")
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {s: 0 for s in train[:3]}, "oracle").save(ctx.run_dir)
    _io.atomic_write_json(_io.join(round_dir(ctx.run_dir, 0), "train_metrics.json"), {"loss": 1.0})
    monkeypatch.setattr(ctx.learner, "evaluate", lambda r: {"test_accuracy": float("nan"), "test_samples": 0})
    lines: list[str] = []
    ctx.progress = lines.append  # type: ignore[method-assign]
    evaluate_stage.run(ctx, _state("evaluate", 0), 0.0)
    (line,) = [x for x in lines if "evaluate:" in x]
    assert (
        "no labeled test images" in line and "hssal_ray.assess" in line and "nan" not in line.split("),")[0]
    )


def test_evaluate_stage_finishes_the_last_round(tmp_path, monkeypatch) -> None:
    ctx, state, _ = _evaluated(tmp_path, monkeypatch, "loop.rounds=0")
    assert read_metrics(ctx.run_dir)[0]["final"] is True
    assert (state.stage, state.status) == ("done", "done")
    saved = RunState.load(ctx.run_dir)
    assert saved is not None and saved.status == "done" and saved.history[-1][:2] == [0, "evaluate"]


def test_score_stage_leaves_out_bad_samples(tmp_path, monkeypatch) -> None:
    ctx = _ctx(tmp_path)
    train = ctx.split("train").column("sample_id").to_pylist()
    _io.atomic_write_text(_io.join(ctx.run_dir, "bad_samples.csv"), f"sample_id,reason\n{train[0]},broken\n")
    seen: dict = {}

    def fake_score_pool(cfg, table, **kw):  # type: ignore[no-untyped-def]
        seen["ids"] = table.column("sample_id").to_pylist()
        seen.update(kw)

    monkeypatch.setattr("hssal_ray.scoring.score_pool", fake_score_pool)
    state = _state("score", 2)
    score_stage.run(ctx, state, 0.0)
    assert seen["ids"] == train[1:]
    assert seen["out_path"] == _io.join(round_dir(ctx.run_dir, 2), "scores.parquet")
    assert seen["ckpt_dir"] == _io.join(round_dir(ctx.run_dir, 2), "checkpoint")
    assert "score" in read_metrics(ctx.run_dir)[0]["wall_s"] and state.stage == "query"


def _score_rounds(tmp_path, monkeypatch, preds: list[np.ndarray], *extra: str):
    """Rounds 1.. of the score stage, each writing ``preds[r]`` for every train row (round 0's given)."""
    ctx = _ctx(tmp_path, "loop.rounds=10", *extra)
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {s: 0 for s in train[:3]}, "oracle").save(ctx.run_dir)
    write_scores(_io.join(round_dir(ctx.run_dir, 0), "scores.parquet"), train, pred=preds[0])
    monkeypatch.setattr(
        ctx.learner, "score", lambda r, out: write_scores(out, train[::-1], pred=preds[r][::-1])
    )
    reports: list = []
    ctx.on_round = reports.append
    states = []
    for r in range(1, len(preds)):
        row = {"round": r, "num_labeled": 3, "test_accuracy": 0.5, "final": False}  # the evaluate stage's
        update_metrics(ctx.run_dir, r, row)
        state = _state("score", r)
        score_stage.run(ctx, state, 0.0)
        states.append(state)
        if state.status == "done":
            break
    return ctx, states, reports, train


def test_score_stage_measures_how_far_the_predictions_moved(tmp_path, monkeypatch) -> None:
    n = 15
    p0 = np.arange(n) % 3
    p1 = p0.copy()
    p1[[0, 5]] = (p1[[0, 5]] + 1) % 3  # row 0 is labeled: only row 5 counts
    ctx, states, reports, _ = _score_rounds(tmp_path, monkeypatch, [p0, p1, p1])
    rows = {m["round"]: m for m in read_metrics(ctx.run_dir)}
    from hssal_ray.rounds.stability import kappa

    assert rows[1]["stability_rows"] == n - 3 and rows[1]["stability_changed"] == pytest.approx(1 / (n - 3))
    assert rows[1]["stability_kappa"] == pytest.approx(kappa(p0[3:], p1[3:]))
    assert rows[2]["stability_kappa"] == 1.0 and rows[2]["stability_changed"] == 0.0
    assert [s.stage for s in states] == ["query", "query"]  # loop.stop_kappa=0: never stops here
    assert reports == []  # and the evaluate stage reports the round


def test_score_stage_stops_the_run_once_the_predictions_settle(tmp_path, monkeypatch) -> None:
    n = 15
    p0 = np.arange(n) % 3
    p1 = p0.copy()
    p1[[4, 5, 6, 7]] = (p1[[4, 5, 6, 7]] + 1) % 3  # kappa 0.50: not settled
    p2 = p1.copy()
    p2[5] = p0[5]  # kappa 0.87: with 0.50 a mean of 0.69 < 0.8
    ctx, states, reports, _ = _score_rounds(
        tmp_path, monkeypatch, [p0, p1, p2, p2, p2], "loop.stop_kappa=0.8", "loop.stop_window=2"
    )
    rows = {m["round"]: m for m in read_metrics(ctx.run_dir)}
    assert [s.stage for s in states] == ["query", "query", "done"]  # round 3: (0.87 + 1.0) / 2 >= 0.8
    assert rows[3]["final"] is True and rows[3]["stopped"] == "stable"
    assert not any(rows[r].get("final") for r in (1, 2)) and "stopped" not in rows[2]
    assert len(reports) == 3 and reports[-1][-1]["final"] is True  # one report a round, with the decision
    saved = RunState.load(ctx.run_dir)
    assert saved is not None and saved.status == "done" and saved.history[-1][:2] == [3, "score"]
    from hssal_ray.cli import summary

    text = summary(ctx.run_dir, saved)
    assert "stopped after round 3: its predictions settled (mean kappa 0.9355 >= loop.stop_kappa)" in text
    assert text.splitlines()[2].endswith("0.5000") and text.splitlines()[1].endswith("kappa")  # round 1


def test_evaluate_stage_leaves_the_report_to_the_score_stage_under_the_stop_rule(
    tmp_path, monkeypatch
) -> None:
    _, state, reports = _evaluated(tmp_path, monkeypatch, "loop.rounds=2", "loop.stop_kappa=0.99")
    assert reports == [] and state.stage == "score"
    _, state, reports = _evaluated(tmp_path / "last", monkeypatch, "loop.rounds=0", "loop.stop_kappa=0.99")
    assert len(reports) == 1 and state.status == "done"  # the last round by count: reported here


# --------------------------------------------------------------------------- query


def test_query_stage_writes_the_batch_without_labeled_rows(tmp_path) -> None:
    ctx = _ctx(tmp_path, "query.strategy=random", "query.budget=4", "loop.total_budget=6")
    train = ctx.split("train").column("sample_id").to_pylist()
    LabeledSet().with_round(0, {s: 0 for s in train[:3]}, "oracle").save(ctx.run_dir)
    n = len(train)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    probs = np.full((n, 3), 1 / 3, dtype=np.float32)
    write_scores(
        _io.join(round_dir(ctx.run_dir, 0), "scores.parquet"),
        train,
        emb,
        probs,
        {"u_badge": np.linspace(0, 1, n, dtype=np.float32)},
    )
    state = _state("query", 0)
    query_stage.run(ctx, state, 0.0)
    ids = read_query_ids(round_dir(ctx.run_dir, 0))
    assert len(ids) == 3  # total_budget 6 - 3 labeled
    assert not set(ids) & set(train[:3]) and set(ids) <= set(train)
    row = read_metrics(ctx.run_dir)[0]
    assert "query" in row["wall_s"] and "RandomQuery" in row["query_strategy"]
    assert row["query_load_s"] >= 0.0 and row["query_select_s"] >= 0.0
    assert state.stage == "label"


def test_round_budget() -> None:
    cfg = load_config(None, ["query.budget=10", "loop.total_budget=25"])
    assert round_budget(cfg, 5, 1000) == 10 and round_budget(cfg, 20, 1000) == 5
    assert round_budget(load_config(None, ["query.budget=10"]), 10_000, 1000) == 10


def test_round_budget_fractions_follow_the_training_split() -> None:
    cfg = load_config(None, ["loop.initial_labeled=0.02", "query.budget=0.02", "loop.total_budget=0.08"])
    # UCM's 1,680 training images: 2% = 34 (33.6), 8% = 134 (134.4): the last round gets what is left
    assert round_budget(cfg, 34, 1680) == 34 and round_budget(cfg, 102, 1680) == 32
    # the same profile on SIRI-WHU's 1,918 training images: 38 a round (38.4), at most 153 (153.4) in all
    assert round_budget(cfg, 38, 1918) == 38 and round_budget(cfg, 140, 1918) == 13


# --------------------------------------------------------------------------- files between stages


def test_query_files_round_trip(tmp_path) -> None:
    d = str(tmp_path / "round_000")
    write_query(d, ["b", "a"], [0.5, 0.25], [1, 0])
    assert read_query_ids(d) == ["b", "a"]
    rows = list(csv.DictReader(open(os.path.join(d, "query.csv"))))
    assert rows[0] == {"sample_id": "b", "rank": "1", "u": "0.5", "coarse_cluster": "1"}
    write_query(d, ["c"], None, None)
    assert list(csv.DictReader(open(os.path.join(d, "query.csv"))))[0]["u"] == ""
    with pytest.raises(StateError, match="query file missing"):
        read_query_ids(str(tmp_path / "nowhere"))


def test_metrics_store_merges_rows(tmp_path) -> None:
    run = str(tmp_path)
    assert read_metrics(run) == []
    update_metrics(run, 1, {"round": 1, "a": 1, "wall_s.train": 1.23456})
    update_metrics(run, 0, {"round": 0, "a": 0})
    update_metrics(run, 1, {"b": np.int64(2), "c": np.float32(0.5), "wall_s.score": 2})
    rows = read_metrics(run)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1] == {"round": 1, "a": 1, "b": 2, "c": 0.5, "wall_s": {"train": 1.235, "score": 2.0}}
    update_metrics(run, 1, {"round": 1, "z": 9}, replace=True)
    assert read_metrics(run)[1] == {"round": 1, "z": 9}

    def lost() -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        update_metrics(run, 0, {"a": 5}, guard=lost)
    assert read_metrics(run)[0]["a"] == 0


def test_load_catalog_takes_a_manifest_built_elsewhere(tmp_path) -> None:
    """A manifest from elsewhere (an archive index) replaces the run's scan; nothing is scanned or written."""
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.synthetic import make_synthetic_rs

    root = make_synthetic_rs(str(tmp_path / "d"), num_classes=3, per_class=4, size=8)
    cfg = load_config(None, [f"loop.run_dir={tmp_path / 'runs'}", "loop.name=r", "data.root=/nonexistent"])
    ctx = RunContext(cfg, progress=lambda s: None)
    cat = scan(root, test_fraction=0.25)
    ctx.load_catalog(cat)
    assert ctx.catalog is cat and ctx.split("train").num_rows == cat.split_table("train").num_rows
    assert not os.path.exists(ctx.run_dir)
