"""``state.json`` and ``labeled.parquet``: loading, advancing, the write guard, idempotent rounds."""

from __future__ import annotations

import json

import pytest

from hssal_ray.errors import StateError
from hssal_ray.state import STAGES, LabeledSet, RunState, round_dir


def test_round_dir_names() -> None:
    assert round_dir("/r", 3).endswith("round_003")
    assert round_dir("s3://b/run", 12) == "s3://b/run/round_012"


def test_new_run_has_no_state(tmp_path) -> None:
    assert RunState.load(str(tmp_path)) is None


def test_advance_walks_the_stages_and_saves(tmp_path) -> None:
    run = str(tmp_path)
    s = RunState(config_sha="abc", seed=3)
    s.advance(run, "init", 0.12345)
    assert (s.round, s.stage) == (0, STAGES[0])
    for stage in STAGES[:-1]:
        s.advance(run, stage, 1.0)
        assert s.stage == STAGES[STAGES.index(stage) + 1]
    s.advance(run, "label", 2.0, next_round=True)
    assert (s.round, s.stage, s.status) == (1, "train", "running")
    loaded = RunState.load(run)
    assert loaded is not None
    assert (loaded.round, loaded.stage, loaded.config_sha, loaded.seed) == (1, "train", "abc", 3)
    assert loaded.history[0] == [0, "init", 0.123]
    assert [h[1] for h in loaded.history] == ["init", *STAGES]
    assert loaded.updated > 0


def test_unknown_keys_are_ignored_and_bad_files_raise(tmp_path) -> None:
    p = tmp_path / "state.json"
    p.write_text(json.dumps({"round": 2, "stage": "score", "from_the_future": 1}))
    s = RunState.load(str(tmp_path))
    assert s is not None and (s.round, s.stage) == (2, "score")
    p.write_text("not json")
    with pytest.raises(StateError, match="is not a valid run state"):
        RunState.load(str(tmp_path))


def test_write_guard_runs_before_every_save(tmp_path) -> None:
    calls: list[int] = []
    s = RunState()
    s.set_write_guard(lambda: calls.append(1))
    s.save(str(tmp_path))
    s.advance(str(tmp_path), "init", 0.0)
    assert len(calls) == 2

    def lost() -> None:
        raise RuntimeError("lease lost")

    s.set_write_guard(lost)
    with pytest.raises(RuntimeError, match="lease lost"):
        s.save(str(tmp_path))
    loaded = RunState.load(str(tmp_path))
    assert loaded is not None and loaded.stage == "train"  # the refused write changed nothing
    assert "_write_guard" not in json.loads((tmp_path / "state.json").read_text())


def test_labeled_set_rounds_are_idempotent(tmp_path) -> None:
    run = str(tmp_path)
    assert len(LabeledSet.load(run)) == 0
    lab = LabeledSet().with_round(0, {"a": 1, "b": 0}, "oracle")
    lab = lab.with_round(1, {"c": 2}, "human")
    again = lab.with_round(1, {"c": 2}, "human")  # a resumed label stage writes the same round again
    assert again.ids == ["a", "b", "c"] and again.labels() == {"a": 1, "b": 0, "c": 2}
    replaced = lab.with_round(1, {"d": 0}, "human")
    assert replaced.ids == ["a", "b", "d"]
    lab.save(run)
    back = LabeledSet.load(run)
    assert back.labels() == {"a": 1, "b": 0, "c": 2}
    assert back.table.column("round_added").to_pylist() == [0, 0, 1]
    assert back.table.column("source").to_pylist() == ["oracle", "oracle", "human"]
    assert back.table.schema.equals(LabeledSet.SCHEMA)


def test_labeled_set_refuses_relabeling_an_earlier_round() -> None:
    lab = LabeledSet().with_round(0, {"a": 1}, "oracle")
    with pytest.raises(StateError, match="already labeled in an earlier round"):
        lab.with_round(1, {"a": 0}, "oracle")
