"""One Ray Tune trial: the function trainable :func:`run_trial` runs a whole closed loop.

The trial reports one result per evaluated round (``training_iteration`` = rounds evaluated), so
ASHA uses rounds as its time axis; :func:`row_is_final` applies the loop's own last-round rule.
"""

from __future__ import annotations

import sys
from typing import Any

from hssal_ray.tune._space import REPEAT_KEY, label_axis, planned_labels, round_metrics, trial_config

__all__ = ["run_trial", "row_is_final"]


def run_trial(config: dict[str, Any], base: dict[str, Any], sweep_dir: str) -> None:
    """Tune function trainable: run (or resume) one trial's closed loop and report every round.

    A restarted trial resumes its run directory (its name depends only on its params) and first
    re-reports the rounds evaluated before, so ``training_iteration`` always equals the number of
    evaluated rounds. The final round is reported after the loop has marked its run done, so a
    scheduler decision on that report cannot cut the run short.

    Args:
        config: Tune's sampled params ``{dotted key: value}`` (and ``_repeat``).
        base: The sweep's base config as a dict.
        sweep_dir: Parent directory of the trials' run directories.
    """
    from ray import tune

    from hssal_ray.loop.runner import LoopRunner, read_metrics

    repeat = int(config.get(REPEAT_KEY, 0))
    params = {k: v for k, v in config.items() if k != REPEAT_KEY}
    cfg = trial_config(base, params, run_dir=sweep_dir, repeat=repeat)
    name = cfg.loop.name
    start, end = float(cfg.loop.initial_labeled), float(planned_labels(cfg))
    x_key = label_axis(cfg)  # the AUC's x axis, in the budgets' own unit (counts or fractions)
    reported = -1

    def report(rows: list[dict[str, Any]], hold_final: bool) -> None:
        nonlocal reported
        for i, row in enumerate(rows):
            r = int(row["round"])
            if r <= reported:
                continue
            final = row_is_final(cfg, row)
            if hold_final and final:
                return  # reported after run() returns, once the run is marked done
            tune.report(
                {
                    **round_metrics(rows[: i + 1], start, end, x_key),
                    "planned_rounds": cfg.loop.rounds,
                    "final": final,
                }
            )
            reported = r

    def progress(line: str) -> None:
        print(f"[{name}] {line}", file=sys.stderr, flush=True)

    report(read_metrics(cfg.run_path), hold_final=True)  # rounds of an earlier attempt
    # a restarted trial may find its earlier attempt's lease (a dead actor on another node): wait it out
    LoopRunner(cfg, progress=progress, on_round=lambda rows: report(rows, hold_final=True)).run(
        lease_wait_s=2 * cfg.loop.lease_timeout_s
    )
    report(read_metrics(cfg.run_path), hold_final=False)


def row_is_final(cfg: Any, row: dict[str, Any]) -> bool:
    """Whether a ``metrics.jsonl`` row is its run's last round (the loop's own rule, ``is_final_round``)."""
    from hssal_ray.loop.runner import is_final_round

    if "final" in row:  # the loop records its decision with the row
        return bool(row["final"])
    asked = int(row["num_labeled"]) + int(row.get("num_labeled_unreadable", 0))  # the loop's count
    frac = max(float(row.get("label_fraction", 1.0)), 1e-9)
    n_train = int(row.get("n_train") or round(int(row["num_labeled"]) / frac))
    return is_final_round(cfg, int(row["round"]), asked, int(row.get("pool_remaining", 1)), n_train)
