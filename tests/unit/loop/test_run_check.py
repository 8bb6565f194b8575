"""A run directory whose ``state.json`` disagrees with its other files is refused (no Ray).

The files of every crash point pass; a state file that is gone, emptied or older than the labels,
and a ``metrics.jsonl`` or ``labeled.parquet`` that is gone or older than the state, are refused
with one line, exit 2, before anything is written: at start-up and at every stage boundary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hssal_ray import _io
from hssal_ray.cli import SMOKE_OVERRIDES, loop_main
from hssal_ray.config import config_to_yaml, load_config
from hssal_ray.errors import StateError
from hssal_ray.loop.metrics import read_metrics, update_metrics
from hssal_ray.loop.run_check import check_run_dir
from hssal_ray.loop.runner import LoopRunner, science_sha
from hssal_ray.state import LabeledSet, RunState, round_dir
from tests._cli import one_error_line


def _run_at(
    run: Path, r: int, stage: str, *, labels_to: int | None = None, rows_to: int | None = None
) -> RunState:
    """The files of a run stopped at round ``r`` before ``stage``, and its state.

    Labels of rounds ``0..labels_to`` and metrics rows ``0..rows_to`` (default: what the stage has).
    """
    run.mkdir(parents=True, exist_ok=True)
    labels_to = r if labels_to is None else labels_to
    rows_to = (r if stage in ("score", "query", "label", "done") else r - 1) if rows_to is None else rows_to
    lab = LabeledSet()
    for k in range(labels_to + 1):
        lab = lab.with_round(k, {f"s{k}_{i}": i for i in range(2)}, "oracle")
    if labels_to >= 0:
        lab.save(str(run))
    for k in range(rows_to + 1):
        update_metrics(str(run), k, {"round": k, "num_labeled": 2 * (k + 1)})
    for k in range(r + 1):
        Path(round_dir(str(run), k)).mkdir(exist_ok=True)
    status = "done" if stage == "done" else "running"
    return RunState(round=r, stage=stage, status=status, config_sha="abc", run_id="id")


@pytest.mark.parametrize(
    ("r", "stage", "extra"),
    [
        (0, "init", {"labels_to": -1}),  # a new run
        (0, "init", {}),  # killed between the cold start's labels and the state write
        (0, "train", {}),
        (1, "evaluate", {"rows_to": 1}),  # killed after the row, before the state write
        (1, "score", {}),
        (2, "label", {"labels_to": 3}),  # killed after the labels, before the state write
        (2, "label", {}),
        (3, "done", {}),
    ],
)
def test_files_of_every_crash_point_pass(tmp_path: Path, r: int, stage: str, extra: dict) -> None:
    run = tmp_path / "r"
    state = _run_at(run, r, stage, **extra)
    check_run_dir(str(run), state)


def _refused(run: Path, state: RunState | None, *fragments: str) -> str:
    with pytest.raises(StateError) as info:
        check_run_dir(str(run), state)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in (*fragments, "restore", "another loop.name"):
        assert frag in msg, (frag, msg)
    return msg


def test_missing_state_with_history_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    for name in ("config.yaml", "manifest.parquet", "classes.json", "lease.json"):  # written before the state
        (run / name).write_text("x")
    check_run_dir(str(run), None)
    (run / "round_000").mkdir()
    _refused(run, None, "has no state.json", "round_000")
    _run_at(run, 1, "train")
    _refused(run, None, "has no state.json", "labeled.parquet", "metrics.jsonl")


def test_state_older_than_the_labels_is_refused(tmp_path: Path) -> None:
    """A state.json restored from an older backup: round 1 resumed while round 2's labels exist."""
    run = tmp_path / "r"
    _run_at(run, 3, "train")
    older = RunState(round=1, stage="train", config_sha="abc", run_id="id")
    _refused(run, older, "round 1 (stage train)", "labels added in round 3", "later round(s) 2", "round_003")


def test_deleted_or_older_metrics_and_labels_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "r"
    state = _run_at(run, 3, "query")
    (run / "metrics.jsonl").unlink()
    _refused(run, state, "metrics.jsonl lacks the rows of evaluated round(s) 0, 1, 2, 3")
    state = _run_at(tmp_path / "s", 3, "query", rows_to=1)  # metrics.jsonl of an older moment
    _refused(tmp_path / "s", state, "lacks the rows of evaluated round(s) 2, 3")
    state = _run_at(tmp_path / "t", 3, "train", labels_to=1)  # labeled.parquet of an older moment
    _refused(tmp_path / "t", state, "labeled.parquet holds labels up to round 1")
    (tmp_path / "t" / "labeled.parquet").unlink()
    _refused(tmp_path / "t", state, "labeled.parquet holds no labels")


def test_corrupt_metrics_are_a_state_error_naming_the_line(tmp_path: Path) -> None:
    update_metrics(str(tmp_path), 0, {"round": 0})
    p = tmp_path / "metrics.jsonl"
    p.write_text(p.read_text() + '{"round": 1, "acc\n')
    with pytest.raises(StateError, match=r"metrics.jsonl line 2 is not valid JSON .*another loop.name"):
        read_metrics(str(tmp_path))
    p.write_text('{"round": 0}\n[1, 2]\n')
    with pytest.raises(StateError, match="line 2 is not a metrics row"):
        read_metrics(str(tmp_path))
    p.write_text('{"round": 0}\n{"round": 0}\n')
    with pytest.raises(StateError, match="line 2 repeats round 0"):
        read_metrics(str(tmp_path))
    p.write_bytes(b"\xff\xfe{")
    with pytest.raises(StateError, match="metrics.jsonl is unreadable"):
        read_metrics(str(tmp_path))


# --------------------------------------------------------------------------- through the CLI


def _cli_run(runs: Path) -> tuple[Path, list[str]]:
    """A smoke run directory at round 2 (stage train), with its config, state, labels and rows."""
    cfg = load_config(None, [*SMOKE_OVERRIDES, f"loop.run_dir={runs}", "loop.name=r"])
    run = Path(cfg.run_path)
    state = _run_at(run, 2, "train")
    state.config_sha = science_sha(cfg)
    state.save(str(run))
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    return run, ["--resume", str(run)]


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda run: (run / "state.json").unlink(), "has no state.json"),
        (lambda run: (run / "state.json").write_text(""), "state.json is not a valid run state"),
        (lambda run: (run / "state.json").write_text("{}"), "missing field(s)"),
        (lambda run: (run / "state.json").write_text("[]"), "expected a JSON object, got list"),
        (
            lambda run: (run / "state.json").write_text(
                json.dumps({**json.loads((run / "state.json").read_text()), "config_sha": ""})
            ),
            "empty config_sha",
        ),
        (lambda run: (run / "metrics.jsonl").unlink(), "lacks the rows of evaluated round(s) 0, 1"),
        (lambda run: (run / "metrics.jsonl").write_text('{"round": 0}\n{"rou'), "metrics.jsonl line 2"),
        (lambda run: (run / "labeled.parquet").write_bytes(b"PAR1 garbage"), "not a readable labeled set"),
    ],
    ids=[
        "state-deleted",
        "state-0-bytes",
        "state-{}",
        "state-list",
        "state-no-config-hash",
        "metrics-deleted",
        "metrics-corrupt",
        "labels-corrupt",
    ],
)
def test_cli_refuses_a_damaged_run_directory_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, damage, expect: str
) -> None:
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: pytest.fail("Ray was started"))
    run, args = _cli_run(tmp_path)
    damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    one_error_line(capsys, loop_main(args), expect, "restore", "another loop.name")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written


def test_metrics_deleted_mid_run_stops_the_run_at_the_next_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``metrics.jsonl`` deleted while the driver trains round 2: the next stage is refused."""
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
    run, args = _cli_run(tmp_path)
    ran: list[str] = []

    def train(self: LoopRunner, state: RunState, t0: float) -> None:
        ran.append("train")
        (run / "metrics.jsonl").unlink()  # someone deletes it meanwhile
        state.advance(self.run_dir, "train", 0.1)

    monkeypatch.setattr(LoopRunner, "_stage_train", train)
    monkeypatch.setattr(LoopRunner, "_stage_evaluate", lambda *a: pytest.fail("evaluate ran"))
    one_error_line(capsys, loop_main(args), "round 2 (stage evaluate)", "metrics.jsonl lacks the rows")
    assert ran == ["train"]
    assert json.loads((run / "state.json").read_text())["stage"] == "evaluate"
    assert not _io.exists(str(run / "metrics.jsonl"))
