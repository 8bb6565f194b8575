"""Training throughput: 1 vs 2 Ray Train CPU workers (DDP, gloo), and the GPU bf16/channels_last path.

**Ray part** (default). The real :func:`hssal_ray.ssl.trainer.fit_round` (Ray Data streaming +
``TorchTrainer`` + the per-worker FixMatch loop) on the same data, model and per-worker batch with

* ``1w x 1t``: 1 worker, 1 intra-op thread (``resources.cpus_per_worker=1``);
* ``2w x 1t``: 2 DDP workers (gloo), 1 thread each;
* ``1w x 2t``: 1 worker, 2 threads (``cpus_per_worker=2``): the same cores without DDP.

Ray is started with ``num_cpus=4`` *logical* CPUs on this 2-core machine: 2 for the training
worker(s) and 2 for the Ray Data decode/augment tasks that feed them (otherwise 2 workers would
take every CPU and the data tasks could not be scheduled). The cores are therefore shared by
training and data preparation in every configuration alike.

Images counted per step and worker = labeled + weak + strong unlabeled images (what
``train_loop`` counts for ``images_per_s_per_worker``). Numbers per configuration:

* ``steady_per_worker_img_s``: a worker's images/s over a steady window, the first to the last
  Ray Train report, on the worker's own clock (its cumulative ``images_per_s_per_worker`` metric
  at two reports, differenced: see :func:`steady_rates`); mean over workers. Excludes worker
  start-up, the data pipeline's start and the first ``report_every`` steps; includes the report
  barriers inside the window, as real training pays them.
* ``steady_total_img_s``: the same summed over workers (the headline quantity).
* ``driver_total_img_s``: cross-check of the total on the driver's clock (report timestamps).
* ``loop_img_s_per_worker``: the final reported ``images_per_s_per_worker`` (whole loop, incl.
  the wait for the first batch).
* ``fit_wall_s`` and ``startup_teardown_s`` (= fit wall - loop time): what a round pays around the loop.

Report timestamps come from a Ray Train ``UserCallback`` (:mod:`benchmarks._report_timer`) passed
to ``fit_round(callbacks=...)``.
The headline ratio is ``2w x 1t`` / ``1w x 1t`` steady total images/s (target: >= 1.0, i.e. 2
workers not slower per image than 1); ``2w x 1t`` / ``1w x 2t`` is reported beside it.

**GPU part** (``--no-ray --device cuda``): the product's worker loop
(:func:`hssal_ray.ssl.train_loop.run_worker`, no Ray, no data pipeline: random pinned host batches
copied to the device each step, :mod:`benchmarks._worker_steps`) in fp32, bf16 autocast, and
bf16 + channels_last; seconds are the loop's time inside ``train_step`` after warm-up steps.
``--device cpu`` runs the same code on CPU (``ssl.amp=bf16`` autocasts on CPU too) so the path
can't rot; CPU bf16 figures are not meaningful.

Usage::

    .venv/bin/python -m benchmarks.train_throughput                 # standard Ray set (CPU)
    .venv/bin/python -m benchmarks.train_throughput --quick --out /tmp/r
    python -m benchmarks.train_throughput --no-ray --device cuda    # GPU box (no Ray needed)
    .venv/bin/python -m benchmarks.train_throughput --no-ray --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import setup_logging, start_local_ray, write_result
from benchmarks._sampler import CpuTracker, peak_rss_mb
from benchmarks._train_report import _headline, _markdown
from benchmarks._train_torch import torch_main

log = logging.getLogger("benchmarks.train_throughput")

MODULE = "benchmarks.train_throughput"


# ------------------------------------------------------------------------------------ Ray part


@dataclass(frozen=True)
class RayCase:
    """One Ray Train configuration: name, workers, CPUs (= intra-op threads) per worker."""

    name: str
    workers: int
    cpus_per_worker: int


RAY_CASES = (RayCase("1w x 1t", 1, 1), RayCase("2w x 1t", 2, 1), RayCase("1w x 2t", 1, 2))


def make_data(root: str | None, tmp: str, *, classes: int, per_class: int, size: int) -> str:
    """The dataset root: ``root`` if given, else a generated synthetic RS ImageFolder under ``tmp``."""
    if root:
        return root
    from hssal_ray.data.synthetic import make_synthetic_rs

    out = os.path.join(tmp, "synthetic")
    make_synthetic_rs(out, num_classes=classes, per_class=per_class, size=size, fmt="png", seed=0)
    return out


def steady_rates(records: list[dict[str, Any]], images_per_step: int) -> dict[str, Any]:
    """Steady-state rates from the report log (see the module docstring).

    Each worker's cumulative ``images_per_s_per_worker`` at a report gives its loop time so far
    (``images / rate``), so two reports give the worker's rate over the window between them, on its
    own clock, free of start-up and of the wait for the first batch. The window runs from the first
    report to the last one (the worker computes its rate *before* rank 0 saves the final checkpoint).
    The driver-clock cross-check uses the controller's report timestamps (which trail the workers by
    up to its polling interval) and stops at the last report before the checkpointing one.

    Args:
        records: ``{"t", "metrics": [per worker]}`` per report, in order.
        images_per_step: Images one worker processes per step.

    Returns:
        ``window_steps`` (from, to), ``steady_per_worker_img_s`` (mean over workers),
        ``steady_total_img_s`` (sum over workers) and ``driver_total_img_s`` (driver clock), or NaNs
        with fewer than 2 reports.
    """
    nan = float("nan")
    recs = [r for r in records if r["metrics"] and all("images_per_s_per_worker" in m for m in r["metrics"])]
    if len(recs) < 2:
        return {
            "window_steps": None,
            "steady_per_worker_img_s": nan,
            "steady_total_img_s": nan,
            "driver_total_img_s": nan,
            "driver_window": None,
        }
    a, b = recs[0], recs[-1]
    per_worker = []
    for ma, mb in zip(a["metrics"], b["metrics"], strict=True):
        ia, ib = ma["steps_run"] * images_per_step, mb["steps_run"] * images_per_step
        ea, eb = ia / ma["images_per_s_per_worker"], ib / mb["images_per_s_per_worker"]
        per_worker.append((ib - ia) / (eb - ea))
    d = recs[-2] if len(recs) >= 3 else b
    world = len(d["metrics"])
    sa, sd = int(a["metrics"][0]["steps_run"]), int(d["metrics"][0]["steps_run"])
    return {
        "window_steps": [sa, int(b["metrics"][0]["steps_run"])],
        "steady_per_worker_img_s": sum(per_worker) / len(per_worker),
        "steady_total_img_s": sum(per_worker),
        "driver_total_img_s": world * (sd - sa) * images_per_step / (d["t"] - a["t"]),
        "driver_window": {"t0": a["t"], "t1": d["t"], "images": world * (sd - sa) * images_per_step},
    }


def run_ray_case(
    case: RayCase,
    *,
    root: str,
    model: str,
    size: int,
    batch: int,
    uratio: int,
    steps: int,
    labeled_fraction: float,
    work: str,
    cpu: CpuTracker | None = None,
) -> dict[str, Any]:
    """Run ``fit_round`` once for ``case`` and return its row of measurements.

    ``cpu``: a running tracker of the Ray runtime's processes, for images per CPU-second in the
    steady window (every process of the runtime counts: training workers, data tasks, daemons).
    """
    import numpy as np
    import pyarrow as pa

    from benchmarks._report_timer import ReportTimer
    from hssal_ray.config import load_config
    from hssal_ray.data.catalog import scan
    from hssal_ray.ssl.trainer import fit_round

    cat = scan(root)
    train = cat.split_table("train")
    train = train.take(pa.array(np.random.default_rng(0).permutation(train.num_rows)))  # classes mixed
    n_lab = max(cat.num_classes, int(round(labeled_fraction * train.num_rows)))
    labeled, pool = train.slice(0, n_lab), train.slice(n_lab)
    cfg = load_config(
        None,
        [
            f"ssl.model={model}",
            f"data.image_size={size}",
            f"ssl.batch_size={batch}",
            f"ssl.uratio={uratio}",
            f"ssl.steps_per_round={steps}",
            "ssl.amp=none",
            f"resources.num_workers={case.workers}",
            f"resources.cpus_per_worker={case.cpus_per_worker}",
            "resources.max_failures=0",
            "resources.executor=ray",  # this benchmark measures Ray Train's workers
        ],
    )
    images_per_step = batch + (2 * batch * uratio if uratio > 0 else 0)
    report_log = os.path.join(work, f"reports_{case.workers}w{case.cpus_per_worker}t.jsonl")
    os.makedirs(work, exist_ok=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = fit_round(
        cfg,
        root=cat.root,
        kind=cat.kind,
        labeled=labeled,
        pool=pool,
        num_classes=cat.num_classes,
        round_idx=0,
        run_dir=os.path.join(work, f"run_{case.workers}w{case.cpus_per_worker}t"),
        init_dir=None,
        callbacks=[ReportTimer(report_log)],
    )
    wall = time.perf_counter() - t0
    records = []
    if os.path.exists(report_log):
        with open(report_log) as f:
            records = [json.loads(line) for line in f if line.strip()]
    m = res.metrics
    rates = steady_rates(records, images_per_step)
    win = rates.pop("driver_window")
    cpu_s = cpu.between(win["t0"], win["t1"]) if cpu is not None and win else float("nan")
    img_per_cpu_s = win["images"] / cpu_s if win and cpu_s > 0 else float("nan")
    loop_rate = float(m.get("images_per_s_per_worker", float("nan")))
    steps_run = int(m.get("steps_run", 0))
    loop_s = (
        steps_run * images_per_step / loop_rate if loop_rate == loop_rate and loop_rate > 0 else float("nan")
    )
    row = {
        "config": case.name,
        "workers": case.workers,
        "threads_per_worker": case.cpus_per_worker,
        "model": model,
        "size": size,
        "batch_per_worker": batch,
        "uratio": uratio,
        "images_per_step_per_worker": images_per_step,
        "steps": steps_run,
        "reports": len(records),
        **rates,
        "img_per_cpu_s": img_per_cpu_s,
        "loop_img_s_per_worker": loop_rate,
        "loop_s": loop_s,
        "fit_wall_s": wall,
        "startup_teardown_s": wall - loop_s,
        "final_loss": m.get("loss"),
        "load_1m_before_after": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }
    log.info(
        "%s: steady %.1f img/s total (%.1f per worker), loop %.1f img/s/worker, fit %.1f s",
        case.name,
        row["steady_total_img_s"],
        row["steady_per_worker_img_s"],
        loop_rate,
        wall,
    )
    return row


def ray_main(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray part: every :data:`RAY_CASES` entry, per model, in one Ray runtime."""
    work = tempfile.mkdtemp(prefix="hssal_train_bench_")
    root = make_data(args.data, work, classes=args.classes, per_class=args.per_class, size=args.gen_size)
    ray_init_s = start_local_ray(args.num_cpus)
    cpu = CpuTracker().start(0.5)  # this driver + every process of its Ray runtime
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    log.info("ray.init: %.1f s (num_cpus=%d logical on %d cores)", ray_init_s, args.num_cpus, os.cpu_count())
    rows = []
    cases = [c for c in RAY_CASES if c.name in args.cases] if args.cases else list(RAY_CASES)
    for model, size in args.models:
        for rep in range(args.repeats):  # round-robin, so that load changes hit every case alike
            for case in cases:
                row = run_ray_case(
                    case,
                    root=root,
                    model=model,
                    size=size,
                    batch=args.batch,
                    uratio=args.uratio,
                    steps=args.steps,
                    labeled_fraction=0.1,
                    work=os.path.join(work, f"rep{rep}"),
                    cpu=cpu,
                )
                rows.append({"repeat": rep, **row})
    import statistics

    ratios: dict[str, dict[str, float]] = {}
    medians: list[dict[str, Any]] = []
    for model, size in args.models:
        by: dict[str, float] = {}
        eff: dict[str, float] = {}
        for case in cases:
            mine = [r for r in rows if (r["model"], r["size"], r["config"]) == (model, size, case.name)]
            vals = [r["steady_total_img_s"] for r in mine]
            cpu_vals = [r["img_per_cpu_s"] for r in mine]
            by[case.name] = statistics.median(vals)
            eff[case.name] = statistics.median(cpu_vals)
            medians.append(
                {
                    "config": case.name,
                    "model": model,
                    "size": size,
                    "repeats": len(vals),
                    "steady_total_img_s_median": by[case.name],
                    "runs": [round(v, 1) for v in vals],
                    "img_per_cpu_s_median": eff[case.name],
                    "cpu_runs": [round(v, 1) for v in cpu_vals],
                }
            )
        key = f"{model}@{size}"
        ratios[key] = {}
        for a, b, name in (
            ("2w x 1t", "1w x 1t", "2w_vs_1w1t"),
            ("2w x 1t", "1w x 2t", "2w_vs_1w2t"),
            ("1w x 2t", "1w x 1t", "1w2t_vs_1w1t"),
        ):
            if a in by and b in by:
                ratios[key][name] = by[a] / by[b]
                ratios[key][f"{name}_per_cpu_s"] = eff[a] / eff[b]
    return {
        "rows": rows,
        "medians": medians,
        "ratios": ratios,
        "ray_init_s": ray_init_s,
        "data": root if args.data else "generated",
    }


# ---------------------------------------------------------------------------------------- CLI


def _models(spec: str) -> list[tuple[str, int]]:
    """``name@size,name@size`` -> ``[(name, size), ...]``."""
    out = []
    for part in spec.split(","):
        name, _, size = part.strip().partition("@")
        out.append((name, int(size or 32)))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line and fill in the standard / quick settings."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.train_throughput", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--no-ray", action="store_true", help="plain-torch train_step loop (GPU part)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the --no-ray part")
    ap.add_argument(
        "--models", default=None, help="name@size list (Ray default hssal_small_cnn@32; GPU resnet18@64)"
    )
    ap.add_argument("--data", default=None, help="dataset root (default: generated synthetic PNGs)")
    ap.add_argument("--classes", type=int, default=8, help="classes of the generated data / random labels")
    ap.add_argument("--per-class", type=int, default=100, help="images per class of the generated data")
    ap.add_argument("--gen-size", type=int, default=32, help="side of the generated images")
    ap.add_argument("--batch", type=int, default=None, help="labeled batch per worker (Ray 16, GPU 64)")
    ap.add_argument("--uratio", type=int, default=None, help="unlabeled per labeled (FixMatch; Ray 7, GPU 7)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (Ray 120, --no-ray 50)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (--no-ray)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of the --no-ray worker loop")
    ap.add_argument("--cases", action="append", help="only these Ray cases (e.g. '2w x 1t'); repeatable")
    ap.add_argument(
        "--repeats", type=int, default=None, help="round-robin repeats of the Ray cases (2; quick 1)"
    )
    ap.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray runtime")
    ap.add_argument("--quick", action="store_true", help="tiny settings (seconds, for smoke tests)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results; --quick: none)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    gpu_part = args.no_ray
    default_models = "resnet18@64" if gpu_part and args.device == "cuda" else "hssal_small_cnn@32"
    args.models = _models(args.models or default_models)
    if args.batch is None:
        args.batch = 64 if gpu_part and args.device == "cuda" else 16
    if args.uratio is None:
        args.uratio = 7
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.steps is None:
        args.steps = 50 if gpu_part else 120
    if args.quick:
        args.batch = min(args.batch, 4)
        args.uratio = min(args.uratio, 2)
        args.warmup = min(args.warmup, 1)
        args.steps = min(args.steps, 3 if gpu_part else 30)
        args.per_class = min(args.per_class, 12)
        args.classes = min(args.classes, 4)
        args.gen_size = min(args.gen_size, 16)
        args.models = [(m, min(s, 16)) for m, s in args.models]
        if not args.cases and not gpu_part:
            args.cases = ["1w x 1t", "2w x 1t"]
    args.out = args.out if args.out is not None else (None if args.quick else "benchmarks/results")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    t0 = time.perf_counter()
    res = torch_main(args) if args.no_ray else ray_main(args)
    res["wall_s"] = time.perf_counter() - t0
    res["driver_peak_rss_mb"] = peak_rss_mb()
    md = _markdown(args, res)
    print(md)
    if args.out is not None:
        name = "train_throughput_gpu" if args.no_ray and args.device == "cuda" else "train_throughput"
        if args.no_ray and args.device == "cpu":
            name = "train_throughput_torch_cpu"
        payload = {
            "part": "torch" if args.no_ray else "ray",
            "rows": res["rows"],
            "ratios": res["ratios"],
            "ratio": _headline(res, args),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "verbose")},
            "gpu_measured": bool(args.no_ray and args.device == "cuda"),
            **{k: v for k, v in res.items() if k not in ("rows", "ratios")},
        }
        write_result(name, payload, md, module=MODULE, out_dir=args.out, gpu=args.device == "cuda")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
