"""End-to-end tests of the real CLI: 3 rounds, resume after SIGKILL, human hand-off."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import SMOKE, interrupt_loop, run_cli, stage_is

pytestmark = pytest.mark.ray

BUDGET = 3
INITIAL = 6


def _labeled(run: Path) -> list[tuple[str, int, int]]:
    t = pq.read_table(run / "labeled.parquet")
    return sorted(
        zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), t["round_added"].to_pylist(), strict=True)
    )


def test_end_to_end_three_rounds(reference_run: Path) -> None:
    run = reference_run
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done" and state["round"] == 2
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert [m["num_labeled"] for m in metrics] == [INITIAL, INITIAL + BUDGET, INITIAL + 2 * BUDGET]
    for m in metrics:
        assert 0.0 <= m["test_accuracy"] <= 1.0
    lab = _labeled(run)
    assert len(lab) == INITIAL + 2 * BUDGET
    assert len({s for s, _, _ in lab}) == len(lab)
    assert sorted({r for _, _, r in lab}) == [0, 1, 2]
    assert (run / "report" / "index.html").exists()
    assert list((run / "report").glob("*.png"))
    assert (run / "round_001" / "query.csv").exists()
    assert (run / "config.yaml").exists()
    # a finished run says so and exits 0
    proc = run_cli("--resume", str(run))
    assert "already finished" in proc.stderr


@pytest.mark.slow  # ~5 min on 2 idle cores (4 training stages); run with `pytest -m slow`
def test_sigkill_during_training_and_query_resumes_to_same_labeled_set(
    reference_run: Path, tmp_path: Path
) -> None:
    """Killed in round 1's training, then in round 1's query (the second round of three): same result."""
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"
    # HSSAL_FAULT_DELAY holds the stage open so the kill lands inside it
    err = tmp_path / "killed.err"
    hold = {"HSSAL_FAULT_DELAY": "train@1=120"}
    interrupt_loop(args, run, err, stage_is(1, "train"), "round 1's training", 2, signal.SIGKILL, True, hold)
    st = json.loads((run / "state.json").read_text())
    assert (st["round"], st["stage"], st["status"]) == (1, "train", "running")
    hold = {"HSSAL_FAULT_DELAY": "query@1=120"}
    interrupt_loop(args, run, err, stage_is(1, "query"), "round 1's query", 2, signal.SIGKILL, True, hold)
    st = json.loads((run / "state.json").read_text())
    assert (st["round"], st["stage"], st["status"]) == (1, "query", "running")
    run_cli(*args)
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    assert _labeled(run) == _labeled(reference_run)
