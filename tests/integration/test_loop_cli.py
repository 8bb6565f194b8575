"""End-to-end tests of the real CLI: 3 rounds, resume after SIGKILL, human hand-off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import REPO, SMOKE, cli_env, run_cli

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


def _kill_when(run_dir: Path, args: list[str], round_: int, stage: str, extra_env: dict[str, str]) -> None:
    env = cli_env()
    env.update(extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hssal_ray.loop", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            sp = run_dir / "state.json"
            if sp.exists():
                try:
                    st = json.loads(sp.read_text())
                except json.JSONDecodeError:
                    st = {}
                if st.get("round") == round_ and st.get("stage") == stage:
                    time.sleep(2.0)
                    break
            if proc.poll() is not None:
                raise AssertionError("the loop finished before it could be killed")
            time.sleep(0.2)
        else:
            raise AssertionError("never reached the stage to kill")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.slow  # ~5 min on 2 idle cores (4 training stages); run with `pytest -m slow`
def test_sigkill_during_training_and_query_resumes_to_same_labeled_set(
    reference_run: Path, tmp_path: Path
) -> None:
    """Killed in round 1's training, then in round 1's query (the second round of three): same result."""
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"
    # HSSAL_FAULT_DELAY holds the stage open so the kill lands inside it
    _kill_when(run, args, 1, "train", {"HSSAL_FAULT_DELAY": "train@1=120"})
    st = json.loads((run / "state.json").read_text())
    assert (st["round"], st["stage"], st["status"]) == (1, "train", "running")
    _kill_when(run, args, 1, "query", {"HSSAL_FAULT_DELAY": "query@1=120"})
    st = json.loads((run / "state.json").read_text())
    assert (st["round"], st["stage"], st["status"]) == (1, "query", "running")
    run_cli(*args)
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    assert _labeled(run) == _labeled(reference_run)
