"""Real Ray Tune sweeps over the whole loop: ASHA over rounds, outputs, restore without re-running trials.

Each trial runs the real loop (tiny synthetic data, smoke model) with a TorchTrainer inside a Tune
function trainable. Ray gets more logical CPUs than the machine has cores: a trial's Ray CPUs mostly
wait on each other (see hssal_ray/tune/search.py for what one trial holds).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hssal_ray.config import load_config
from hssal_ray.loop.runner import load_run_config, read_metrics, science_sha
from hssal_ray.tune._space import learning_curve_auc, planned_labels, trial_name
from tests.integration.conftest import REPO, cli_env, run_cli, run_module

pytestmark = pytest.mark.ray

DEMO = ["--config", "configs/sweep_demo.yaml"]


def run_tune(*args: str, timeout: float = 1500, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m hssal_ray.tune ARGS`` in a subprocess (its own Ray runtime)."""
    return run_module("hssal_ray.tune", *args, timeout=timeout, check=check)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _decisions(sweep: Path) -> list[dict]:
    p = sweep / "scheduler_decisions.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _snapshot(sweep: Path) -> dict[str, tuple[float, str]]:
    """mtime + content of every trial's config.yaml (rewritten whenever the loop is started) and metrics."""
    out = {}
    for d in sorted(p for p in sweep.iterdir() if (p / "state.json").exists()):
        for name in ("config.yaml", "metrics.jsonl", "state.json"):
            f = d / name
            if f.exists():
                out[f"{d.name}/{name}"] = (f.stat().st_mtime, f.read_text())
    return out


@pytest.mark.timeout(1200)  # ~2.5 min on 2 idle cores; repeats -> seeds are unit-tested (test_space.py)
def test_asha_sweep_table_best_config_decisions_and_rerun(tmp_path: Path) -> None:
    """2 trials (a p_cutoff grid), ASHA with grace period 1 over 2 rounds, run side by side."""
    args = [
        *DEMO,
        f"loop.run_dir={tmp_path}",
        "resources.num_cpus=6",
        "loop.rounds=1",
        "loop.total_budget=0",
        "tune.num_samples=1",
        "tune.search_space={ssl.p_cutoff: {grid: [0.7, 0.95]}}",
    ]
    t0 = time.perf_counter()
    proc = run_tune(*args)
    first_s = time.perf_counter() - t0
    sweep = tmp_path / "sweep_demo"

    # --- the table
    rows = _rows(sweep / "trials.csv")
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    assert {r["ssl.p_cutoff"] for r in rows} == {"0.7", "0.95"}
    assert sorted((r["repeat"], r["seed"]) for r in rows) == [("0", "0"), ("0", "0")]
    for r in rows:
        assert r["status"] in ("completed", "early_stopped"), r
        run = Path(r["run_dir"])
        assert run.parent == sweep and run.name == r["name"]
        metrics = read_metrics(str(run))
        assert (
            int(r["rounds"]) == metrics[-1]["round"] and int(r["num_labeled"]) == metrics[-1]["num_labeled"]
        )
        cfg = load_run_config(str(run))
        auc = learning_curve_auc(
            [(m["num_labeled"], m["test_accuracy"]) for m in metrics],
            cfg.loop.initial_labeled,
            planned_labels(cfg),
        )
        assert float(r["auc"]) == pytest.approx(auc, abs=1e-5)
        assert float(r["final_accuracy"]) == pytest.approx(metrics[-1]["test_accuracy"], abs=1e-5)
        assert float(r["wall_s"]) > 0
        if r["status"] == "completed":
            assert json.loads((run / "state.json").read_text())["status"] == "done" and len(metrics) == 2
    assert any(r["status"] == "completed" for r in rows)
    aucs = [float(r["auc"]) for r in rows if r["status"] == "completed"]
    assert aucs == sorted(aucs, reverse=True)  # ranked, completed trials first

    # --- the scheduler's decisions: ASHA judged every trial at the first rung (round 0)
    decisions = _decisions(sweep)
    by_trial = {r["trial_id"]: r for r in rows}
    assert {d["trial_id"] for d in decisions if d["training_iteration"] == 1} == set(by_trial)
    for d in decisions:
        assert d["decision"] in ("CONTINUE", "STOP") and d["metric"] == "auc"
        assert d["final"] == (int(d["training_iteration"]) == 2)
        if (
            d["decision"] == "STOP" and not d["final"]
        ):  # stopped after round it-1: that many rounds in its run dir
            it = int(d["training_iteration"])
            assert by_trial[d["trial_id"]]["status"] == "early_stopped"
            assert by_trial[d["trial_id"]]["stopped_at_round"] == str(it - 1)
            assert len(read_metrics(by_trial[d["trial_id"]]["run_dir"])) == it
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["scheduler_decisions"] == len(decisions) and summary["max_concurrent_trials"] == 2
    assert (sweep / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    # --- the best config: a complete loop YAML that the loop CLI runs
    best = load_config(str(sweep / "best_config.yaml"))
    assert best.loop.name == "best" and best.loop.run_dir == str(sweep) and best.tune.search_space == {}
    top = rows[0]
    assert science_sha(best) == science_sha(load_run_config(top["run_dir"]))
    assert best.ssl.p_cutoff == float(top["ssl.p_cutoff"])
    # pointed at the best trial's own run directory, the loop CLI accepts it (same science): nothing to do
    done = run_cli("--config", str(sweep / "best_config.yaml"), f"loop.name={top['name']}")
    assert "already finished" in done.stderr

    # --- re-running the same command restores the experiment and runs no trial again
    before = _snapshot(sweep)
    t0 = time.perf_counter()
    again = run_tune(*args)
    rerun_s = time.perf_counter() - t0
    assert "resuming the sweep" in again.stderr
    assert _snapshot(sweep) == before
    assert _decisions(sweep) == decisions
    assert [r["trial_id"] for r in _rows(sweep / "trials.csv")] == [r["trial_id"] for r in rows]
    print(f"sweep {first_s:.0f} s, re-run {rerun_s:.0f} s; {proc.stderr.count('round ')} round lines")


def _tune_trials(exp: Path) -> dict[str, tuple[str, str]]:
    """Tune's saved ``{trial_id: (status, run name)}`` from the newest experiment state."""
    states = sorted(exp.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:
        return {}
    out = {}
    for item in data.get("trial_data", []):
        t = json.loads(item[0]) if isinstance(item, list) else json.loads(item)
        params = {k: v for k, v in t["config"].items() if k != "_repeat"}
        out[t["trial_id"]] = (t.get("status", ""), trial_name(params, int(t["config"].get("_repeat", 0))))
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    """Kill the driver (and its Ray) while trial 2 of 3 runs; --resume ends it without re-running trial 1."""
    args = [
        *DEMO,
        f"loop.run_dir={tmp_path}",
        "resources.num_cpus=3",
        "loop.rounds=0",
        "loop.total_budget=0",
        "tune.search_space={ssl.p_cutoff: {grid: [0.6, 0.7, 0.8]}}",
    ]
    sweep, exp = tmp_path / "sweep_demo", tmp_path / "tune" / "sweep_demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hssal_ray.tune", *args],
        cwd=REPO,
        # Tune saves the experiment state the test watches every 10 s at most ("auto"); trials of a
        # rounds=0 loop can all end inside one such gap (session 60: the sweep ended unseen), so
        # this sweep saves it every second
        env={**cli_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    finished: dict[str, str] = {}
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            status = _tune_trials(exp)
            finished = {t: name for t, (s, name) in status.items() if s == "TERMINATED"}
            running = {t for t, (s, _) in status.items() if s == "RUNNING"}
            if finished and running:
                break
            time.sleep(1.0)
        else:
            raise AssertionError("never saw one trial finished while another ran")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # what Tune recorded as finished must not run again (config.yaml is rewritten whenever a loop starts)
    kept = {k: v for k, v in _snapshot(sweep).items() if k.split("/")[0] in finished.values()}
    assert kept, "the finished trial's run directory is missing"

    # the interrupted sweep resumes and ends every trial
    out = run_tune(*args, "--resume")
    assert "resuming the sweep" in out.stderr
    rows = _rows(sweep / "trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert set(finished) <= {r["trial_id"] for r in rows}  # the same Tune trials, not new ones
    after = _snapshot(sweep)
    assert {d: after[d] for d in kept} == kept  # finished trials were not started again
    assert _tune_trials(exp) == {r["trial_id"]: ("TERMINATED", r["name"]) for r in rows}

    # the same place with a different search space is refused (before Ray starts)
    changed = run_tune(*args[:-1], "tune.search_space={ssl.p_cutoff: {grid: [0.5]}}", check=False)
    assert changed.returncode == 2 and "different sweep" in changed.stderr


@pytest.mark.timeout(900)  # ~25 s on 2 idle cores
def test_a_trial_that_stops_on_settled_predictions_reports_its_last_round_as_final(tmp_path: Path) -> None:
    """``loop.stop_kappa``: the score stage ends the trial's loop; Tune gets that round once, marked final."""
    args = [
        *DEMO,
        f"loop.run_dir={tmp_path}",
        "loop.rounds=4",
        "loop.total_budget=0",
        "loop.stop_kappa=0.01",  # any agreement at all: the first kappa settles it
        "loop.stop_window=1",
        "tune.search_space={ssl.p_cutoff: {grid: [0.7]}}",
    ]
    run_tune(*args)
    sweep = tmp_path / "sweep_demo"
    (row,) = _rows(sweep / "trials.csv")
    metrics = read_metrics(row["run_dir"])
    assert row["status"] == "completed" and int(row["rounds"]) == 1  # stopped after round 1 of 4
    assert [m["round"] for m in metrics] == [0, 1] and metrics[-1]["stopped"] == "stable"
    assert metrics[-1]["final"] is True and metrics[-1]["stability_kappa"] >= 0.01
    reports = [(d["round"], d["final"]) for d in _decisions(sweep) if d["trial_id"] == row["trial_id"]]
    assert reports == [(0, False), (1, True)]  # each round reported once, the last with the decision
    assert json.loads((Path(row["run_dir"]) / "state.json").read_text())["status"] == "done"
