"""Run the product's training worker loop on in-memory step batches and read its per-step figures.

:func:`hssal_ray.ssl.train_loop.run_worker` is the loop Ray Train runs on every worker (and the
in-driver executor runs in process): it builds the round's state from the config, streams the
labeled and unlabeled shards, calls ``train_step`` and reports cumulative metrics. The device
benchmarks (``train_throughput --no-ray``, ``gpu_check``'s step throughput) time the step itself,
free of the data pipeline, so they hand the loop shards that cycle batches already in memory and
report every step; the per-step seconds come from the loop's own ``step_s`` counter (time inside
``train_step``) and the per-step loss from its running means (:func:`window_means`). No Ray is imported.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["run_worker_steps", "window_means"]

#: step metrics that are finite at every step, so window means recovered from running means are exact
WINDOW_KEYS = ("loss", "sup_loss", "unsup_loss", "mask_rate")


def window_means(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-window means from the worker loop's reports (each holds running means since step 0).

    A report whose step count does not advance (a repeated final report) or that has no loss is
    skipped. Returns ``[{"steps": "a-b", <key>: mean over steps a..b}]`` for :data:`WINDOW_KEYS`.
    """
    out: list[dict[str, Any]] = []
    prev_n, prev = 0, {}
    for r in reports:
        n = int(r.get("steps_run", r.get("step", 0)))
        if n <= prev_n or "loss" not in r:
            continue
        row: dict[str, Any] = {"steps": f"{prev_n + 1}-{n}"}
        for k in WINDOW_KEYS:
            if k in r:
                row[k] = (r[k] * n - prev.get(k, 0.0) * prev_n) / (n - prev_n)
        out.append(row)
        prev_n, prev = n, {k: r[k] for k in WINDOW_KEYS if k in r}
    return out


class _CycledShard:
    """A stand-in for a Ray Data shard: ``iter_torch_batches`` cycles fixed, prepared batches."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def iter_torch_batches(self, **_: Any) -> Iterator[dict[str, Any]]:
        return itertools.cycle(self.batches)


def run_worker_steps(
    cfg: Any,
    num_classes: int,
    device: Any,
    labeled: list[dict[str, Any]],
    unlabeled: list[dict[str, Any]] | None,
    steps: int,
    *,
    threads: int = 1,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """``steps`` steps of the product's worker loop on cycled batches; one row per step.

    Args:
        cfg: the experiment config (model, batch sizes, AMP, channels_last, optimiser).
        num_classes: classes of the head.
        device: the torch device the loop trains on.
        labeled: labeled step batches (``x_weak``, ``label``), each ``ssl.batch_size`` rows.
        unlabeled: unlabeled step batches (``x_weak``, ``x_strong``, ``label``), or None (no SSL term).
        steps: steps to run.
        threads: torch intra-op threads of the loop.
        seed: the loop's torch seed.
        on_step: called with the step number after each step's report (e.g. to reset a peak-memory
            counter after the warm-up).

    Returns:
        ``[{"step", "step_s", "loss"}]``: seconds inside ``train_step`` and the step's loss.
    """
    from hssal_ray.config import config_to_dict
    from hssal_ray.ssl.train_loop import LocalContext, run_worker

    reports: list[dict[str, Any]] = []

    class _Ctx(LocalContext):
        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
            reports.append(dict(metrics))
            if on_step is not None:
                on_step(int(metrics["step"]))

    config = {
        "experiment": config_to_dict(cfg),
        "num_classes": num_classes,
        "total_steps": steps,
        "init_dir": None,
        "round": 0,
        "ssl_on": unlabeled is not None,
        "seed": seed,
        "report_every": 1,
        "threads_per_worker": threads,
        "fault_kill": None,
    }
    shards = {"labeled": _CycledShard(labeled), "unlabeled": _CycledShard(unlabeled or [])}
    with tempfile.TemporaryDirectory(prefix="hssal_worker_steps_") as tmp:
        ctx = _Ctx(shards, tmp)
        ctx.device = device
        run_worker(config, ctx)
    if len(reports) != steps:
        raise RuntimeError(f"the worker loop reported {len(reports)} of {steps} steps")
    step_s = [r["step_s"] for r in reports]  # cumulative seconds inside train_step
    return [
        {"step": r["step"], "step_s": t - t0, "loss": w["loss"]}
        for r, w, t, t0 in zip(reports, window_means(reports), step_s, [0.0, *step_s[:-1]], strict=True)
    ]
