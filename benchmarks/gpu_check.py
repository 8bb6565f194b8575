"""GPU evidence in one command, without Ray: the product's training, encode, scoring, k-means and k-NN code.

Every section calls the product's Ray-free code on real images, on the GPU, with the GPU profile's
settings (``configs/ucm.yaml``: bf16 autocast, channels_last; the profile does not use
``torch.compile``, so neither does this):

* ``train_throughput``: :func:`hssal_ray.ssl.train_loop.run_worker` (the loop a Ray Train worker
  runs, in process, on prepared step batches: :mod:`benchmarks._worker_steps`), for
  EfficientNet-Lite0 (the packaged ImageNet weights) and ResNet-50 (random init), profile settings
  and fp32: images/s (labeled + weak + strong per step), peak GPU memory, the loss at every step.
* ``encode``: :class:`hssal_ray.frozen.store.Encoder` (the encode actor) on the clean + 2 weak + 2
  strong views of every image (the store's seeds): images/s per view; the backbone alone in NCHW and
  channels_last; the CPU cost of the product's augmentation per image.
* ``frozen_head``: :func:`hssal_ray.frozen.head.train_head` with the ``configs/ucm_cpu.yaml`` recipe
  on those features, 8% of the training labels (stratified): test accuracy.
* ``kmeans``: the torch k-means backend (:mod:`hssal_ray.query.backends`) on 1M and 10M x 512 fp16
  rows on the GPU, the CPU backend on the same 1M rows (faiss is not on the GPU machine: the CPU
  backend there is torch), the host-resident variant, HAL's ``select`` on CUDA embeddings, and the
  cuML backend's cupy hand-off (``CumlKMeans._to_cupy``; cuML itself is not installed there).
* ``knn``: the k-NN graph of 1M x 1280 fp16 nodes (:func:`hssal_ray.frozen.knn_torch.knn_cosine`,
  tiled float16 products re-scored in float32), its recall against an exact float32 search, and
  the affinity matrix; then the sharded graph's search as a GPU shard actor runs it
  (:func:`hssal_ray.frozen.shards.block_topk`, float32 on the device), timed and checked against the CPU.
* ``finetune``: :func:`hssal_ray.ssl.train_loop.run_worker` (the worker loop that Ray Train runs)
  on the GPU: full FixMatch fine-tuning of Lite0 at the same 8% labels, batches made by the
  product's per-sample augmentation in DataLoader worker processes; then
  :class:`hssal_ray.scoring.Scorer` in ``eval`` mode (the evaluation actor) on the test split. Is
  full fine-tuning worth it on a GPU, against the frozen head?
* ``scoring``: :class:`hssal_ray.scoring.Scorer` (the scoring actor) on the pool: images/s.

Each section is written to ``gpu_check.json`` / ``.md`` as soon as it is measured (a run stopped at
its time limit keeps what it measured); a section that runs out of GPU memory or fails is recorded
and the run goes on; ``--budget-s`` skips what no longer fits and sizes the fine-tuning run.

Usage::

    .venv/bin/python -m benchmarks.gpu_check --prepare gpu_check_data    # UCM at 224 px + Lite0 weights
    python3 -m benchmarks.gpu_check --data gpu_check_data --out "$OUT"    # on the GPU machine (~5 min)
    .venv/bin/python -m benchmarks.gpu_check --data gpu_check_data --toy  # the same code, toy sizes, CPU

Without CUDA the run is the toy one: the same functions at toy sizes on CPU (the float16 k-NN tiles
too), written as ``gpu_check_toy.*`` to a temporary folder unless ``--out`` is given; its numbers
measure nothing.

This module is the command (flags, the sections in order, ``--keep``, the environment record); the
rest is in :mod:`benchmarks._gpu`: sizes, ``--prepare``, the run's bookkeeping, the training
streams, the sections by concern, and the markdown report.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import _git_commit
from benchmarks._gpu.features import sec_encode, sec_frozen_head
from benchmarks._gpu.loaders import AugSteps, Normalise
from benchmarks._gpu.prepare import prepare
from benchmarks._gpu.report import render_markdown
from benchmarks._gpu.run import Run, guarded
from benchmarks._gpu.search import sec_kmeans, sec_knn
from benchmarks._gpu.sizes import MODULE, REPO, SECTIONS, _dist_version, _r
from benchmarks._gpu.train import _windows, sec_finetune, sec_scoring, sec_train_throughput

__all__ = [
    "SECTIONS",
    "AugSteps",
    "Normalise",
    "_windows",
    "guarded",
    "main",
    "prepare",
    "render_markdown",
]

log = logging.getLogger("benchmarks.gpu_check")

SECTION_FNS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "train_throughput": sec_train_throughput,
    "encode": sec_encode,
    "frozen_head": sec_frozen_head,
    "kmeans": sec_kmeans,
    "knn": sec_knn,
    "finetune": sec_finetune,
    "scoring": sec_scoring,
}


def environment(run: Run) -> dict[str, Any]:
    """Device, versions and machine of this run."""
    import torch

    env: dict[str, Any] = {
        "device": str(run.dev),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": run.threads,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "versions": {
            p: _dist_version(p)
            for p in (
                "timm",
                "torchvision",
                "numpy",
                "pyarrow",
                "scikit-learn",
                "scipy",
                "pillow",
                "safetensors",
                "cupy-cuda13x",
                "cupy-cuda12x",
            )
        },
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "ray_installed": importlib.util.find_spec("ray") is not None,
        "faiss_installed": importlib.util.find_spec("faiss") is not None,
        "cuml_installed": importlib.util.find_spec("cuml") is not None,
        "git_commit": _git_commit(),
    }
    if run.cuda:
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=p.name,
            gpu_memory_gib=_r(p.total_memory / 2**30, 1),
            gpu_capability=f"{p.major}.{p.minor}",
            gpu_multiprocessors=p.multi_processor_count,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            q = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            env["nvidia_smi"] = q.stdout.strip() or None
    return env


def kept_sections(run: Run, path: str) -> dict[str, dict[str, Any]]:
    """The ``ok`` sections of an earlier results file (``--keep``), marked with that run's start.

    What later sections take from them is restored too: the frozen head's accuracy (the fine-tuning
    comparison) and Lite0's step time (the fine-tuning run's length).

    Raises:
        DataError: The file is unreadable, or a toy run's results would mix with a GPU run's.
    """
    from hssal_ray.errors import DataError

    try:
        prev = json.loads(Path(path).read_text())
        secs = prev["sections"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"--keep {path}: not a gpu_check results file ({type(e).__name__}: {e})") from None
    if bool(prev.get("toy")) != run.toy:
        kind = "toy" if prev.get("toy") else "GPU"
        raise DataError(f"--keep {path}: holds a {kind} run's results, and this run is not one")
    kept = {
        n: {**r, "kept_from_run": prev.get("started_utc")} for n, r in secs.items() if r.get("status") == "ok"
    }
    if "frozen_head" in kept:
        run.frozen_acc = kept["frozen_head"].get("test_accuracy")
    for row in kept.get("train_throughput", {}).get("rows", []):
        if row.get("case") == "profile" and row.get("status") == "ok":
            run.step_s[row["model"]] = row["step_ms"] / 1000.0
    run.results["kept"] = {"from": str(path), "sections": sorted(kept)}
    return kept


def execute(run: Run, sections: Sequence[str]) -> int:
    """Run the selected sections in order, writing the results after each; returns the exit code."""
    import torch

    run.results["environment"] = environment(run)
    earlier = kept_sections(run, run.args.keep) if run.args.keep else {}
    run.write()
    run.load()
    run.write()
    for name in SECTIONS:
        res: dict[str, Any]
        need = run.sizes.min_s[name]
        if name not in sections:
            res = earlier.get(name) or {"status": "skipped", "reason": "not selected (--sections)"}
        elif run.remaining() < need:
            res = {
                "status": "skipped",
                "reason": f"budget: {run.remaining():.0f} s left, needs >= {need:.0f} s",
            }
        else:
            log.info("[%5.0f s] %s ...", run.elapsed(), name)
            t = time.perf_counter()
            res = guarded(lambda name=name: SECTION_FNS[name](run))
            res["seconds"] = _r(time.perf_counter() - t, 2)
            torch.set_num_threads(run.threads)  # the worker loop and the actors set their own
            log.info("[%5.0f s] %s: %s", run.elapsed(), name, res["status"])
        run.results["sections"][name] = res
        run.write()
    bad = [n for n, r in run.results["sections"].items() if r["status"] in ("error", "oom")]
    return 1 if bad else 0


# ----------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", metavar="DIR", help="copy the images and Lite0 weights into DIR, then exit")
    ap.add_argument(
        "--ucm", default=str(REPO.parent / "shared/data/ucm"), help="--prepare: source image tree"
    )
    ap.add_argument("--per-class", type=int, default=100, help="--prepare: images per class")
    ap.add_argument("--size", type=int, default=224, help="--prepare: image side")
    ap.add_argument("--quality", type=int, default=85, help="--prepare: JPEG quality")
    ap.add_argument("--max-mib", type=float, default=48.0, help="--prepare: refuse a larger folder")
    ap.add_argument("--data", default="gpu_check_data", help="the prepared folder")
    ap.add_argument("--out", help="results folder (default benchmarks/results; toy runs: a temporary folder)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--toy", action="store_true", help="toy sizes (automatic without CUDA)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="skip sections that no longer fit; sizes the fine-tuning",
    )
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    ap.add_argument(
        "--ft-steps", type=int, default=2000, help="fine-tuning steps at most (the budget may allow fewer)"
    )
    ap.add_argument(
        "--keep", metavar="JSON", help="an earlier results file: its ok sections stand for those not run now"
    )
    ap.add_argument(
        "--workers", type=int, help="DataLoader worker processes per loader (default: from the CPUs)"
    )
    ap.add_argument("--ft-max-s", type=float, default=120.0, help="fine-tuning seconds at most")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from hssal_ray.errors import HSSALError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        if args.prepare:
            m = prepare(
                args.prepare,
                args.ucm,
                per_class=args.per_class,
                size=args.size,
                quality=args.quality,
                max_mib=args.max_mib,
            )
            print(
                f"prepared {args.prepare}: {m['images']} images, {m['classes']} classes, {m['total_mib']} MiB"
            )
            return 0
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            from hssal_ray.errors import ConfigError

            raise ConfigError(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
        run = Run(args)
        try:
            code = execute(run, sections)
        finally:
            shutil.rmtree(run.work, ignore_errors=True)  # scratch checkpoints and runs
        print(f"wrote {run.out / run.name}.json and .md (exit {code})")
        return code
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
