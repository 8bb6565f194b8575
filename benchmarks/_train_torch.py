"""The GPU part of :mod:`benchmarks.train_throughput` (``--no-ray``): the plain-torch FixMatch step loop.

The product's :func:`~hssal_ray.ssl.steps.train_step` on a state built from the default config
(:func:`~hssal_ray.ssl.train_loop.build_optimization`, ``TrainState.create``), fed random pinned
host batches copied to the device each step, in fp32, bf16 autocast and with channels_last; timed
after warm-up steps with ``torch.cuda.synchronize``. No Ray and no data pipeline.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("benchmarks.train_throughput")


@dataclass(frozen=True)
class TorchCase:
    """One plain-torch precision/layout configuration."""

    name: str
    bf16: bool
    channels_last: bool


TORCH_CASES = (
    TorchCase("fp32", False, False),
    TorchCase("bf16", True, False),
    TorchCase("bf16 + channels_last", True, True),
    TorchCase("fp32 + channels_last", False, True),
)


def run_torch_case(
    case: TorchCase,
    *,
    device: str,
    model_name: str,
    size: int,
    batch: int,
    uratio: int,
    num_classes: int,
    warmup: int,
    steps: int,
    compile_model: bool,
) -> dict[str, Any]:
    """Time ``steps`` FixMatch :func:`train_step` calls (after ``warmup``) for one case."""
    import torch

    from hssal_ray.config import load_config
    from hssal_ray.models import build_model
    from hssal_ray.rounds import build_optimization
    from hssal_ray.ssl.steps import TrainState, prepare_model, train_step

    dev = torch.device(device)
    torch.manual_seed(0)
    cfg = load_config(None, [])  # the training defaults (thresholds, EMA, optimiser, schedule)
    model = prepare_model(
        build_model(model_name, num_classes, in_chans=3), dev, channels_last=case.channels_last
    )
    model = torch.compile(model) if compile_model else model
    opt, scheduler = build_optimization(cfg, model, warmup + steps)
    state = TrainState.create(model, opt, scheduler, cfg.ssl, num_classes=num_classes)
    pin = dev.type == "cuda"
    ub = batch * uratio

    def host(n: int) -> torch.Tensor:
        x = torch.randn(n, 3, size, size)
        return x.pin_memory() if pin else x

    batch_l = {"x": host(batch), "y": torch.randint(0, num_classes, (batch,))}
    batch_u = {"x_weak": host(ub), "x_strong": host(ub)} if uratio > 0 else None
    amp = torch.bfloat16 if case.bf16 else None

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        train_step(
            state,
            batch_l,
            batch_u,
            cfg.ssl,
            dev,
            amp_dtype=amp,
            channels_last=case.channels_last,
            allow_cpu_amp=dev.type != "cuda",
        )

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    images = steps * (batch + 2 * ub)
    row = {
        "config": case.name,
        "device": device,
        "model": model_name,
        "size": size,
        "batch": batch,
        "uratio": uratio,
        "compile": compile_model,
        "steps": steps,
        "step_ms": 1000 * dt / steps,
        "img_s": images / dt,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 1024**3 if dev.type == "cuda" else None,
    }
    log.info("%s on %s: %.1f img/s (%.1f ms/step)", case.name, device, row["img_s"], row["step_ms"])
    return row


def torch_main(args: argparse.Namespace) -> dict[str, Any]:
    """The plain-torch part: every :data:`TORCH_CASES` entry per model on ``args.device``."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    else:
        torch.backends.cudnn.benchmark = True
    rows = []
    for model, size in args.models:
        for case in TORCH_CASES:
            rows.append(
                run_torch_case(
                    case,
                    device=args.device,
                    model_name=model,
                    size=size,
                    batch=args.batch,
                    uratio=args.uratio,
                    num_classes=args.classes,
                    warmup=args.warmup,
                    steps=args.steps,
                    compile_model=args.compile,
                )
            )
    ratios: dict[str, dict[str, float]] = {}
    for model, size in args.models:
        by = {r["config"]: r["img_s"] for r in rows if r["model"] == model and r["size"] == size}
        ratios[f"{model}@{size}"] = {f"{k}_vs_fp32": v / by["fp32"] for k, v in by.items() if k != "fp32"}
    return {"rows": rows, "ratios": ratios}
