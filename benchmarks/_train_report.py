"""The Markdown report and headline ratio of :mod:`benchmarks.train_throughput`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks._common import md_table


def _markdown(args: argparse.Namespace, res: dict[str, Any]) -> str:
    if args.no_ray:
        cols = [
            "config",
            "device",
            "model",
            "size",
            "batch",
            "uratio",
            "step_ms",
            "img_s",
            "peak_gpu_mem_gib",
        ]
        note = (
            "The product's worker loop (`ssl.train_loop.run_worker`; no Ray, no data pipeline: random pinned "
            "host batches copied to the device every step), its time inside `train_step` after warm-up. "
            "images/step = batch x (1 + 2 x uratio).\n"
        )
        if args.device != "cuda":
            note += (
                "\n**GPU numbers were not measured in this run** (device = CPU): this only shows the code "
                "path runs; bf16 autocast on CPU is not a meaningful speed figure.\n"
            )
        return "## Plain torch train_step\n\n" + md_table(res["rows"], cols) + "\n\n" + note + _ratios_md(res)
    cols = [
        "config",
        "repeat",
        "model",
        "size",
        "batch_per_worker",
        "uratio",
        "steps",
        "window_steps",
        "steady_total_img_s",
        "steady_per_worker_img_s",
        "driver_total_img_s",
        "img_per_cpu_s",
        "loop_img_s_per_worker",
        "fit_wall_s",
        "startup_teardown_s",
        "load_1m_before_after",
    ]
    note = (
        f"- Ray started with num_cpus={args.num_cpus} *logical* CPUs on {os.cpu_count()} cores: the training "
        "workers take 1 (or 2) each, the rest run the Ray Data decode/augment tasks that feed them; the "
        "physical cores are shared by training and data preparation in every configuration.\n"
        "- Steady state = the report window `window_steps` (first to last report; excludes start-up, the "
        "data pipeline's start and the first report interval). `steady_per_worker_img_s`: each worker's "
        "rate on its own clock (its cumulative `images_per_s_per_worker` metric at both ends, differenced), "
        "mean over workers; `steady_total_img_s`: their sum; `driver_total_img_s`: the total on the driver's "
        "clock (Ray Train report timestamps, window ending before the final checkpointing report; trails "
        "the workers by up to the controller's polling interval). `loop_img_s_per_worker`: the final "
        "cumulative metric (whole loop, incl. the wait for the first batch). `startup_teardown_s`: fit "
        "wall time minus the loop (worker start, dataset start-up, teardown).\n"
        "- Images per step and worker = batch x (1 + 2 x uratio) (labeled + weak + strong). Ratios use the "
        "median over repeats of `steady_total_img_s`. `load_1m_before_after`: the host's 1-minute load "
        "average around each fit (the machine is shared with other users' jobs, so wall-clock rates vary "
        "with their load).\n"
        "- `img_per_cpu_s`: images per CPU-second (user + system, from /proc) burnt by this driver and every "
        "process of its Ray runtime (training workers, Ray Data tasks, Ray's daemons) over the driver-clock "
        "window: the cost of an image, which depends much less on other users' load than wall time "
        "(it still rises under contention: shared caches, spinning threads). `*_per_cpu_s` ratios "
        "compare it (>= 1: the first configuration spends less CPU per image).\n"
        f"- Data: {res['data']}; same per-worker batch in every configuration (so 2 workers do twice the "
        "images per step).\n"
        f"- `ray.init`: {res['ray_init_s']:.1f} s. GPU (bf16 vs fp32) not measured here: no GPU on this "
        "machine (run `python -m benchmarks.train_throughput --no-ray --device cuda` on one).\n"
    )
    return (
        "## Ray Train, CPU (DDP gloo)\n\n"
        + md_table(
            res["medians"], ["config", "model", "size", "repeats", "steady_total_img_s_median", "runs"]
        )
        + "\n\nAll runs (cases interleaved round-robin):\n\n"
        + md_table(res["rows"], cols)
        + "\n\n"
        + _ratios_md(res)
        + "\n"
        + note
    )


def _ratios_md(res: dict[str, Any]) -> str:
    lines = ["Ratios (same run):", ""]
    for key, rs in res["ratios"].items():
        for name, v in rs.items():
            lines.append(f"- {key} {name}: **{v:.2f}**")
    return "\n".join(lines) + "\n"


def _headline(res: dict[str, Any], args: argparse.Namespace) -> float | None:
    """2 workers / 1 worker (Ray part) or bf16+channels_last / fp32 (torch part) of the first model."""
    first = next(iter(res["ratios"].values()), {})
    key = "bf16 + channels_last_vs_fp32" if args.no_ray else "2w_vs_1w1t"
    return first.get(key)
