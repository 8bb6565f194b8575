"""Sweep YAML loading (``base:``) and the sweep's output files, on fake trials (no Ray)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.tune._results import DECISIONS_FILE, TrialRecord, write_outputs
from hssal_ray.tune._space import trial_config
from hssal_ray.tune.search import load_sweep_config, plan_sweep, trial_bundles, trial_footprint

REPO = Path(__file__).resolve().parents[3]


def test_base_key_is_resolved_relative_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "loop.yaml").write_text(
        "ssl: {steps_per_round: 7, lr: 0.1}\nloop: {initial_labeled: 9}\n"
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base: profiles/loop.yaml\nssl: {lr: 0.2}\nloop: {name: s}\n"
        "tune: {search_space: {query.budget: {grid: [3]}}}\n"
    )
    cfg = load_sweep_config(str(sweep), ["ssl.uratio=3"])
    assert (cfg.ssl.steps_per_round, cfg.ssl.lr, cfg.ssl.uratio) == (7, 0.2, 3)  # base, sweep wins, override
    assert cfg.loop.initial_labeled == 9 and cfg.loop.name == "s"
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_sweep_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_sweep_config(str(tmp_path / "c.yaml"))


def test_shipped_sweep_configs_validate() -> None:
    cfg = load_sweep_config(str(REPO / "configs" / "sweep_demo.yaml"))
    plan = plan_sweep(cfg)
    assert plan.keys == ["query.budget", "ssl.p_cutoff"] and plan.max_t == 3
    assert plan.footprint == {"CPU": 3.0, "GPU": 0.0}
    if (REPO / "configs" / "ucm_cpu.yaml").exists():
        plan_sweep(load_sweep_config(str(REPO / "configs" / "sweep_ucm_cpu.yaml")))


def test_trial_bundles_follow_resources() -> None:
    cfg = load_config(
        None,
        [
            "resources.use_gpu=true",
            "resources.score_actors=2",
            "resources.num_workers=3",
            "tune.gpus_per_trial=0.5",
        ],
    )
    assert trial_bundles(cfg) == [{"CPU": 1.0, "GPU": 0.5}]
    assert trial_footprint(cfg) == {"CPU": 5.0, "GPU": 3.5}  # head + decode + max(train, score)
    cfg = load_config(None, ["query.parallel=true", "resources.score_actors=2"])
    assert trial_bundles(cfg) == [{"CPU": 1.0}, {"CPU": 1.0}]  # a bundle for HAL's captured tasks
    assert trial_footprint(cfg) == {"CPU": 5.0, "GPU": 0.0}


def _rec(base, tid: str, budget: int, accs: list[float], status: str, auc: float) -> TrialRecord:
    cfg = trial_config(base, {"query.budget": budget}, run_dir="/sweep")
    rows = [{"round": i, "num_labeled": 6 + i * budget, "test_accuracy": a} for i, a in enumerate(accs)]
    return TrialRecord(
        tid,
        cfg.loop.name,
        {"query.budget": budget},
        cfg,
        rows,
        status,
        {"auc": auc, "final_accuracy": accs[-1], "time_total_s": 12.5},
        stopped_at_round=0 if status == "early_stopped" else None,
    )


def test_write_outputs(tmp_path: Path) -> None:
    base = load_config(None, ["loop.initial_labeled=6", "loop.total_budget=12", "loop.name=sw"])
    trials = [
        _rec(base, "a", 3, [0.4, 0.5, 0.6], "completed", 0.5),
        _rec(base, "b", 6, [0.3], "early_stopped", 0.9),  # stopped: ranked after every completed trial
        _rec(base, "c", 2, [0.4, 0.7, 0.8, 0.8], "completed", 0.7),
        TrialRecord(
            "d",
            "x",
            {"query.budget": 1},
            trial_config(base, {"query.budget": 1}),
            status="error",
            error="boom",
        ),
    ]
    (tmp_path / DECISIONS_FILE).write_text(
        json.dumps({"trial_id": "b", "decision": "STOP", "round": 0}) + "\n"
    )
    best = trial_config(base, {"query.budget": 2}, run_dir=str(tmp_path), name="best")
    summary = write_outputs(
        str(tmp_path), trials, metric="auc", keys=["query.budget"], best_config=best, info={}
    )
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [r["trial_id"] for r in rows] == ["c", "a", "b", "d"]
    assert rows[0]["auc"] == "0.7" and rows[0]["query.budget"] == "2" and rows[0]["rounds"] == "3"
    assert rows[2]["status"] == "early_stopped" and rows[2]["stopped_at_round"] == "0"
    assert rows[3]["status"] == "error" and rows[3]["auc"] == ""
    assert summary["best"]["trial_id"] == "c" and summary["early_stopped"] == {"b": 0}
    assert summary["scheduler_stops"] == [{"trial_id": "b", "decision": "STOP", "round": 0}]
    loaded = load_config(str(tmp_path / "best_config.yaml"))
    assert loaded == best and loaded.loop.name == "best"
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
