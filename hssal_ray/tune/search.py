"""Ray Tune sweeps over the whole closed loop (one of the few modules that import Ray).

Each trial is a Tune *function trainable* (:func:`run_trial`) that builds its loop config and
runs :class:`~hssal_ray.loop.runner.LoopRunner`; the loop's training stage fits a Ray Train
``TorchTrainer`` inside the trial, the Train V2 pattern of Ray 2.60. After every evaluated round
the trial reports ``round``, ``num_labeled``, ``test_accuracy``, ``auc`` and ``final_accuracy``,
so ASHA can stop weak trials with rounds as its time axis (``training_iteration`` = rounds
evaluated, round 0 included).

Resources of one trial, measured on Ray 2.60 (``ray list actors/tasks`` during a sweep):

- Tune reserves a placement group per trial: one head bundle ``{CPU: tune.cpus_per_trial, GPU:
  tune.gpus_per_trial}`` for the trial function (the loop driver, which also runs the query math),
  plus one ``{CPU: 1}`` bundle with ``query.parallel`` (HAL's per-cluster Ray tasks use default
  scheduling, so the trial captures them into its group; without that bundle they would wait forever).
- Everything else the loop starts runs *outside* that group, in the cluster's free CPUs: Ray Data
  schedules its decode tasks and scoring actors with ``SPREAD``; Train V2 creates the training
  workers' own placement group per round and pins its ``DatasetManager`` (which runs the training
  data pipeline) to the node. Only the Train controller (0 CPUs) lands in the trial's group.

Tune only sees the first part, so letting it run as many trials as its groups fit deadlocks: the
trials' groups take every CPU and each trial's ``TorchTrainer`` (or its decode tasks) waits forever.
So the sweep counts a trial's whole footprint,
``head (+1 with query.parallel) + 1 decode CPU + max(training workers x cpus_per_worker,
score_actors)`` CPUs (training and scoring never overlap; an auto scoring pool, ``score_actors: 0``, is
one actor inside a trial) and the GPUs likewise, and caps the
trials running at once at ``floor(cluster resources / footprint)`` through the search generator
(``tune.max_concurrent_trials``: 0 = that cap; a larger value is lowered to it with a warning). Then
the long-lived holders (heads, training groups, scoring actors) always leave at least one CPU per
running trial for the short decode tasks, and every trial makes progress.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from hssal_ray import _io
from hssal_ray.config import ExperimentConfig, config_to_dict
from hssal_ray.errors import ConfigError
from hssal_ray.tune._plan import (
    SweepPlan,
    check_same_sweep,
    load_sweep_config,
    plan_sweep,
    trial_bundles,
    trial_footprint,
)
from hssal_ray.tune._results import DECISIONS_FILE, TrialRecord, rank_key, write_outputs
from hssal_ray.tune._space import REPEAT_KEY, trial_config, trial_name
from hssal_ray.tune.trial import row_is_final, run_trial

__all__ = [
    "SweepPlan",
    "load_sweep_config",
    "plan_sweep",
    "prepare_shared_inputs",
    "run_sweep",
    "run_trial",
    "row_is_final",
    "trial_bundles",
    "trial_footprint",
]

log = logging.getLogger(__name__)


def _param_space(plan: SweepPlan) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for s in plan.specs:
        if s.kind == "grid":
            space[s.key] = tune.grid_search(list(s.values))
        elif s.kind == "choice":
            space[s.key] = tune.choice(list(s.values))
        else:
            space[s.key] = getattr(tune, s.kind)(*s.values)
    # num_samples as a grid over the repeat index: same number of trials, but each repeat gets
    # its own stable run name (and seed + k) instead of clashing with an identical twin.
    n = plan.cfg.tune.num_samples
    if n > 1:
        space[REPEAT_KEY] = tune.grid_search(list(range(n)))
    return space


def _concurrency(plan: SweepPlan) -> int:
    import ray

    have = ray.cluster_resources()
    fp = plan.footprint
    fits = [math.floor(have.get("CPU", 0.0) / fp["CPU"] + 1e-9)]
    if fp["GPU"] > 0:
        fits.append(math.floor(have.get("GPU", 0.0) / fp["GPU"] + 1e-9))
    n = min(fits)
    r = plan.cfg.resources
    if n < 1:
        raise ConfigError(
            f"one trial needs {fp['CPU']:g} CPUs and {fp['GPU']:g} GPUs (tune.cpus_per_trial "
            f"{plan.cfg.tune.cpus_per_trial:g} + 1 for decoding + the larger of {r.num_workers} training "
            f"worker(s) x {r.cpus_per_worker:g} and {r.trial_score_actors()} scoring actor(s)), but the Ray "
            "cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; start Ray with more "
            "(resources.num_cpus) or lower the per-trial resources"
        )
    want = plan.cfg.tune.max_concurrent_trials
    if want > n:
        log.warning(
            "tune.max_concurrent_trials=%d would oversubscribe the cluster; running %d at a time", want, n
        )
    return n if want == 0 else min(want, n)


def _start_ray(cfg: ExperimentConfig) -> None:
    import ray

    from hssal_ray._ray import ensure_ray, init_private_ray

    if ray.is_initialized() or cfg.resources.address or os.environ.get("RAY_ADDRESS"):
        ensure_ray(cfg.resources)
        return
    # A plain ray.init() joins any cluster a `ray start` left running on this machine (and then
    # rejects num_cpus); a sweep without an address wants its own local runtime, on no well-known port.
    init_private_ray(
        num_cpus=cfg.resources.num_cpus,
        object_store_memory=cfg.resources.object_store_memory,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )


def prepare_shared_inputs(cfg: ExperimentConfig, sweep_dir: str, say: Callable[[str], None]) -> bool:
    """Build what the trials share before any starts (the frozen path's embedding store); True if built.

    Here, in the sweep's driver, the encode gets the cluster's free CPUs or GPUs
    (``resources.encode_actors: 0``); inside a trial it would get one actor, and trials running at once
    would each encode the same store. A trial whose swept keys change what the store is keyed by
    (images, backbone, input) still encodes its own. Not for the generated demo data (each trial
    generates its own under its run directory).
    """
    from hssal_ray.data.bootstrap import scan_config
    from hssal_ray.learners import learner_class

    learner = learner_class(cfg)
    if not learner.shares_inputs or cfg.data.root is None:
        return False
    _io.makedirs(sweep_dir)
    learner.prepare_inputs(cfg, scan_config(cfg), sweep_dir, progress=say)
    return True


def _trial_name_of(trial: Any) -> str:
    cfg = dict(trial.config)
    return trial_name({k: v for k, v in cfg.items() if k != REPEAT_KEY}, int(cfg.get(REPEAT_KEY, 0)))


def _make_scheduler(plan: SweepPlan) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    sweep_dir = plan.sweep_dir

    class RecordingASHA(AsyncHyperBandScheduler):
        """ASHA that appends each decision to ``<sweep dir>/scheduler_decisions.jsonl``."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            _record_decision(sweep_dir, trial, result, action, self._metric)
            return str(action)

    if plan.cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    t = plan.cfg.tune
    # max_t one past the longest trial: ASHA never stops a trial just for reaching the horizon
    return RecordingASHA(
        time_attr="training_iteration",
        max_t=plan.max_t + 1,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )


def _record_decision(
    sweep_dir: str, trial: Any, result: dict[str, Any], action: str, metric: str | None
) -> None:
    import json

    p = _io.join(sweep_dir, DECISIONS_FILE)
    old = _io.read_text(p) if _io.exists(p) else ""
    row = {
        "time": round(time.time(), 3),
        "trial_id": trial.trial_id,
        "name": _trial_name_of(trial),
        "training_iteration": result.get("training_iteration"),
        "round": result.get("round"),
        "metric": metric,
        "value": result.get(metric or ""),
        "decision": str(action),
        # a decision on a trial's last round cannot shorten it: the run is already done
        "final": bool(result.get("final", False)),
    }
    _io.atomic_write_text(p, old + json.dumps(row) + "\n")


# --------------------------------------------------------------------------- sweep


def _collect(plan: SweepPlan, results: Any) -> list[TrialRecord]:
    from hssal_ray.loop.runner import read_metrics
    from hssal_ray.state import RunState
    from hssal_ray.tune._results import read_decisions

    stops: dict[str, dict[str, Any]] = {}
    for d in read_decisions(plan.sweep_dir):
        if d.get("decision") == "STOP" and not d.get("final"):
            stops.setdefault(d["trial_id"], d)
    base = config_to_dict(plan.cfg)
    out = []
    for res in results:
        params = dict(res.config or {})
        repeat = int(params.pop(REPEAT_KEY, 0))
        cfg = trial_config(base, params, run_dir=plan.sweep_dir, repeat=repeat)
        metrics = dict(res.metrics or {})
        trial_id = str(metrics.get("trial_id") or os.path.basename(str(res.path)))
        rows = read_metrics(cfg.run_path)
        state = RunState.load(cfg.run_path) if _io.exists(cfg.run_path) else None
        stop = stops.get(trial_id)
        rec = TrialRecord(
            trial_id=trial_id,
            name=cfg.loop.name,
            params={**params, **({REPEAT_KEY: repeat} if repeat else {})},
            config=cfg,
            rows=rows,
            metrics=metrics,
        )
        if res.error is not None:
            rec.status, rec.error = "error", str(res.error).splitlines()[0][:300]
        elif state is not None and state.status == "done":
            rec.status = "completed"
        elif stop is not None:
            rec.status, rec.stopped_at_round = "early_stopped", stop.get("round")
        else:
            rec.status = "stopped" if rows else "pending"
        out.append(rec)
    return out


def _best_config(plan: SweepPlan, trials: list[TrialRecord]) -> ExperimentConfig | None:
    ranked = [t for t in trials if not math.isnan(t.value(plan.cfg.tune.metric))]
    if not ranked:
        return None
    ranked.sort(key=rank_key(plan.cfg.tune.metric))
    best = ranked[0]
    params = {k: v for k, v in best.params.items() if k != REPEAT_KEY}
    return trial_config(
        config_to_dict(plan.cfg),
        params,
        run_dir=plan.sweep_dir,
        name="best",
        repeat=int(best.params.get(REPEAT_KEY, 0)),
    )


def run_sweep(
    cfg: ExperimentConfig, *, resume: bool = False, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) a sweep to the end and write its outputs into the sweep directory.

    Args:
        cfg: Sweep config (loop settings + ``tune`` section).
        resume: Require an existing experiment to restore (re-running the same command restores
            one anyway when it exists).
        progress: Called with summary lines (default: stderr).

    Returns:
        The summary also written to ``<sweep dir>/sweep_summary.json``.

    Raises:
        ConfigError: An invalid sweep, or not enough resources for a single trial.
        StateError: ``resume`` without an experiment to restore.
    """
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from hssal_ray.errors import StateError

    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    plan = plan_sweep(cfg)
    restoring = tune.Tuner.can_restore(plan.exp_path)
    if resume and not restoring:
        raise StateError(f"--resume: no sweep to resume at {plan.exp_path}")
    check_same_sweep(plan, restoring)
    # Tune would chdir each trial into its trial directory; keep the job's working directory so
    # relative paths in the config (data.root, ssl.weights) mean what they mean to the loop CLI.
    # Tune propagates this variable from the driver to the trial actors.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    _start_ray(cfg)
    prepare_shared_inputs(cfg, plan.sweep_dir, say)
    limit = _concurrency(plan)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config_to_dict(cfg), sweep_dir=plan.sweep_dir),
        tune.PlacementGroupFactory(trial_bundles(cfg)),
    )
    say(
        f"[hssal.tune] sweep {plan.exp_name}: {', '.join(plan.keys)}; one trial holds "
        f"{plan.footprint['CPU']:g} CPUs / {plan.footprint['GPU']:g} GPUs, {limit} at a time; "
        f"runs in {plan.sweep_dir}; Tune state in {plan.exp_path}"
    )
    if restoring:
        say(f"[hssal.tune] resuming the sweep in {plan.exp_path} (finished trials are kept)")
        tuner = tune.Tuner.restore(
            plan.exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(plan),
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric,
                mode="max",
                scheduler=_make_scheduler(plan),
                num_samples=1,
                # the concurrency cap lives in the generator (Tune ignores max_concurrent_trials with one)
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=limit),
                trial_name_creator=_trial_name_of,
                trial_dirname_creator=lambda t: str(t.trial_id),
            ),
            run_config=tune.RunConfig(
                name=plan.exp_name,
                storage_path=plan.storage,
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=1,
            ),
        )
    t0 = time.perf_counter()
    results = tuner.fit()
    trials = _collect(plan, results)
    summary = write_outputs(
        plan.sweep_dir,
        trials,
        metric=cfg.tune.metric,
        keys=plan.keys,
        best_config=_best_config(plan, trials),
        info={
            "experiment_path": plan.exp_path,
            "sweep_dir": plan.sweep_dir,
            "max_concurrent_trials": limit,
            "trial_footprint": plan.footprint,
            "trial_bundles": trial_bundles(cfg),
            "fit_wall_s": round(time.perf_counter() - t0, 1),
        },
    )
    say(f"[hssal.tune] {len(trials)} trials: {summary['status_counts']}; best: {summary['best']}")
    say(
        "[hssal.tune] wrote trials.csv, best_config.yaml, learning_curves.png, sweep_summary.json "
        f"in {plan.sweep_dir}"
    )
    return summary
