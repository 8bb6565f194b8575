"""``state.json`` and ``labeled.parquet``: loading, advancing, the write guard, idempotent rounds."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
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


def _saved(tmp_path, **fields) -> dict:
    RunState(config_sha="abc", history=[[0, "init", 1.5]], **fields).save(str(tmp_path))
    return json.loads((tmp_path / "state.json").read_text())


def test_unknown_keys_are_ignored_and_bad_files_raise(tmp_path) -> None:
    p = tmp_path / "state.json"
    p.write_text(json.dumps({**_saved(tmp_path), "round": 2, "stage": "score", "from_the_future": 1}))
    s = RunState.load(str(tmp_path))
    assert s is not None and (s.round, s.stage) == (2, "score")
    p.write_text("not json")
    with pytest.raises(StateError, match="is not a valid run state"):
        RunState.load(str(tmp_path))


def test_state_of_a_run_from_before_run_ids_loads(tmp_path) -> None:
    raw = _saved(tmp_path)
    del raw["run_id"]
    (tmp_path / "state.json").write_text(json.dumps(raw))
    s = RunState.load(str(tmp_path))
    assert s is not None and s.run_id == "" and s.config_sha == "abc"


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda raw: b"", "Expecting value"),  # emptied: 0 bytes
        (lambda raw: {}, "missing field(s) round, stage, status, config_sha"),
        (lambda raw: [raw], "expected a JSON object, got list"),
        (lambda raw: "round 2", "expected a JSON object, got str"),
        (lambda raw: {**raw, "round": "2"}, "round: expected int"),
        (lambda raw: {**raw, "round": True}, "round: expected int"),
        (lambda raw: {**raw, "round": -1}, "round: must be >= 0"),
        (lambda raw: {**raw, "stage": "labelling"}, "unknown stage"),
        (lambda raw: {**raw, "status": "paused"}, "unknown status"),
        (lambda raw: {**raw, "status": "done"}, "status 'done' with stage 'init'"),
        (lambda raw: {**raw, "status": "awaiting_labels", "stage": "train"}, "'awaiting_labels' with stage"),
        (lambda raw: {**raw, "config_sha": ""}, "empty config_sha"),
        (lambda raw: {**raw, "config_sha": None}, "config_sha: expected str"),
        (lambda raw: {**raw, "history": {"0": 1}}, "history: expected list"),
        (lambda raw: {**raw, "history": [[0, "init"]]}, "history[0]: expected [round, stage, seconds]"),
        (lambda raw: {**raw, "run_id": 7}, "run_id: expected str"),
    ],
)
def test_state_of_the_wrong_shape_is_refused_with_how_to_recover(tmp_path, edit, expect) -> None:
    bad = edit(_saved(tmp_path))
    (tmp_path / "state.json").write_bytes(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
    with pytest.raises(StateError) as info:
        RunState.load(str(tmp_path))
    msg = str(info.value)
    assert "state.json is not a valid run state" in msg and expect in msg, msg
    assert "restore" in msg and "another loop.name" in msg and "\n" not in msg


def test_unreadable_labeled_set_is_refused_with_how_to_recover(tmp_path) -> None:
    LabeledSet().with_round(0, {"a": 1}, "oracle").save(str(tmp_path))
    p = tmp_path / "labeled.parquet"
    p.write_bytes(p.read_bytes()[:-20])  # truncated
    with pytest.raises(StateError, match=r"labeled.parquet is not a readable labeled set .*loop.name"):
        LabeledSet.load(str(tmp_path))
    p.write_bytes(b"sample_id,label\na,1\n")  # not Parquet at all
    with pytest.raises(StateError, match="is not a readable labeled set"):
        LabeledSet.load(str(tmp_path))
    pq.write_table(pa.table({"sample_id": ["a"], "label": [1]}), p)  # another schema
    with pytest.raises(StateError, match="is not a readable labeled set"):
        LabeledSet.load(str(tmp_path))


def test_write_guard_runs_before_every_save(tmp_path) -> None:
    calls: list[int] = []
    s = RunState(config_sha="abc")
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
