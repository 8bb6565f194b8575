"""The GPU part of :mod:`benchmarks.train_throughput` (``--no-ray``): the product's worker loop, no Ray.

:func:`hssal_ray.ssl.train_loop.run_worker` (the loop Ray Train runs on each worker) configured per
case (``ssl.model``, ``ssl.amp``, ``ssl.channels_last``, batch sizes) and fed random pinned host
batches that it copies to the device each step (:mod:`benchmarks._worker_steps`), in fp32, bf16
autocast and with channels_last. Seconds are the loop's own time inside ``train_step`` after the
warm-up steps. No Ray and no data pipeline.
"""

from __future__ import annotations

import argparse
import logging
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
    threads: int,
) -> dict[str, Any]:
    """Time ``steps`` steps of the product's worker loop (after ``warmup``) for one case."""
    import torch

    from benchmarks._worker_steps import run_worker_steps
    from hssal_ray.config import load_config

    dev = torch.device(device)
    cfg = load_config(
        None,
        [
            f"ssl.model={model_name}",
            f"ssl.amp={'bf16' if case.bf16 else 'none'}",
            f"ssl.channels_last={str(case.channels_last).lower()}",
            f"ssl.batch_size={batch}",
            f"ssl.uratio={uratio}",
            f"data.image_size={size}",
        ],
    )
    pin = dev.type == "cuda"
    ub = batch * uratio

    def host(n: int) -> torch.Tensor:
        x = torch.randn(n, 3, size, size)
        return x.pin_memory() if pin else x

    labeled = [{"x_weak": host(batch), "label": torch.randint(0, num_classes, (batch,))}]
    unlabeled = (
        [{"x_weak": host(ub), "x_strong": host(ub), "label": torch.randint(0, num_classes, (ub,))}]
        if uratio > 0
        else None
    )

    def after(step: int) -> None:
        if step == warmup and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    rows = run_worker_steps(
        cfg, num_classes, dev, labeled, unlabeled, warmup + steps, threads=threads, on_step=after
    )
    dt = sum(r["step_s"] for r in rows[warmup:])
    images = steps * (batch + 2 * ub)
    row = {
        "config": case.name,
        "device": device,
        "model": model_name,
        "size": size,
        "batch": batch,
        "uratio": uratio,
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
    if args.device == "cuda":
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
                    threads=max(1, args.threads),
                )
            )
    ratios: dict[str, dict[str, float]] = {}
    for model, size in args.models:
        by = {r["config"]: r["img_s"] for r in rows if r["model"] == model and r["size"] == size}
        ratios[f"{model}@{size}"] = {f"{k}_vs_fp32": v / by["fp32"] for k, v in by.items() if k != "fp32"}
    return {"rows": rows, "ratios": ratios}
