"""One GPU check run: device, sizes, data, configs, budget, result files; sections that fail are recorded."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._gpu.loaders import _loader_check
from benchmarks._gpu.report import render_markdown
from benchmarks._gpu.sizes import (
    FULL,
    IMAGES_DIR,
    LABEL_FRACTION,
    LITE0,
    LITE0_MEAN_STD,
    MANIFEST,
    MODULE,
    REPO,
    TOY,
    WEIGHTS_FILE,
    _r,
)


class Run:
    """One run: device, sizes, data, configs, budget, and the results written after every section."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.t0 = time.perf_counter()
        cuda = torch.cuda.is_available() and args.device != "cpu"
        if args.device == "cuda" and not cuda:
            from hssal_ray.errors import ConfigError

            raise ConfigError("--device cuda: no CUDA device is visible")
        self.dev = torch.device("cuda" if cuda else "cpu")
        self.cuda = cuda
        self.toy = bool(args.toy or not cuda)
        self.sizes = TOY if self.toy else FULL
        self.budget = float(args.budget_s)
        self.name = "gpu_check_toy" if self.toy else "gpu_check"
        default_out = (
            Path(tempfile.gettempdir()) / "hssal_gpu_check_toy" if self.toy else REPO / "benchmarks/results"
        )
        self.out = Path(args.out) if args.out else default_out
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        if self.toy:  # tiny problems: OpenMP barriers would cost more than a second thread saves
            torch.set_num_threads(1)
        self.threads = torch.get_num_threads()
        self.data_dir = Path(args.data)
        self.results: dict[str, Any] = {
            "kind": "gpu_check",
            "toy": self.toy,
            "measured_on_gpu": bool(self.cuda and not self.toy),
            "command": " ".join(["python", "-m", MODULE, *sys.argv[1:]]),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": self.budget,
            "sizes": {k: v for k, v in dataclasses.asdict(self.sizes).items() if k != "min_s"},
            "sections": {},
        }
        # filled by the sections
        self.step_s: dict[str, float] = {}
        self.views: dict[str, np.ndarray] | None = None
        self.frozen_acc: float | None = None
        self.ft_ckpt: str | None = None
        self.loader_ok = True

    # -- time and files

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.budget - self.elapsed()

    def write(self) -> None:
        """``<out>/<name>.json`` and ``.md``, each written atomically."""
        import sys as _sys

        self.results["elapsed_s"] = _r(self.elapsed(), 1)
        self.results["ray_imported"] = "ray" in _sys.modules
        self.out.mkdir(parents=True, exist_ok=True)
        for suffix, text in (
            (".json", json.dumps(self.results, indent=2, default=_json_default) + "\n"),
            (".md", render_markdown(self.results)),
        ):
            path = self.out / f"{self.name}{suffix}"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    # -- data

    def load(self) -> None:
        """Scan and decode the prepared images (the product's catalog split), build the label split."""
        from benchmarks._product import stratified_subset
        from hssal_ray.data.catalog import scan
        from hssal_ray.data.decode import decode_image
        from hssal_ray.errors import DataError

        root = self.data_dir / IMAGES_DIR
        if not (self.data_dir / MANIFEST).is_file() or not root.is_dir():
            raise DataError(
                f"{self.data_dir / MANIFEST} not found: "
                f"run `python -m {MODULE} --prepare {self.data_dir}` first"
            )
        self.manifest = json.loads((self.data_dir / MANIFEST).read_text())
        self.weights = str(self.data_dir / WEIGHTS_FILE)
        cfg = self.profile_cfg()
        cat = scan(str(root), test_fraction=cfg.data.test_fraction, seed=cfg.seed)
        t = cat.table
        self.catalog = cat
        self.ids = np.asarray(t.column("sample_id").to_pylist(), dtype=object)
        self.labels = t.column("label").to_numpy().astype(np.int64)
        split = np.asarray(t.column("split").to_pylist(), dtype=object)
        self.num_classes = cat.num_classes
        size = self.sizes.image_size
        t1 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as ex:
            imgs = list(ex.map(lambda s: decode_image((root / s).read_bytes(), bands=3, size=size), self.ids))
        self.images = np.stack(imgs)
        self.train_rows = np.flatnonzero(split == "train")
        self.test_rows = np.flatnonzero(split == "test")
        if not self.toy or self.args.workers:
            self.loader_ok, self.results["loader_check"] = _loader_check()
        pick = stratified_subset(self.labels[self.train_rows], LABEL_FRACTION, seed=cfg.seed)
        self.lab_rows = self.train_rows[pick]
        self.pool_rows = np.setdiff1d(self.train_rows, self.lab_rows)
        self.results["data"] = {
            "root": str(root),
            "manifest": self.manifest,
            "images": len(self.ids),
            "classes": self.num_classes,
            "train": len(self.train_rows),
            "test": len(self.test_rows),
            "labeled": len(self.lab_rows),
            "labeled_fraction": LABEL_FRACTION,
            "pool": len(self.pool_rows),
            "decode_s": _r(time.perf_counter() - t1, 2),
            "split": f"the product's seeded stratified split (test_fraction {cfg.data.test_fraction}, "
            f"seed {cfg.seed}); labels: benchmarks._product.stratified_subset({LABEL_FRACTION}, "
            f"seed {cfg.seed}) of the train split",
        }

    # -- configs

    def profile_cfg(self, model: str = LITE0, extra: Sequence[str] = ()) -> Any:
        """``configs/ucm.yaml`` (the GPU profile) with the prepared images and ``model``."""
        from hssal_ray.config import load_config

        s = self.sizes
        over = [
            f"data.root={self.data_dir / IMAGES_DIR}",
            f"data.image_size={s.image_size}",
            f"ssl.model={model}",
        ]
        if model == LITE0:
            over += [
                f"ssl.weights={self.data_dir / WEIGHTS_FILE}",
                f"data.mean={LITE0_MEAN_STD}",
                f"data.std={LITE0_MEAN_STD}",
            ]
        if self.toy:
            over += [
                f"ssl.batch_size={s.batch}",
                f"ssl.uratio={s.uratio}",
                f"ssl.eval_batch_size={s.eval_batch}",
            ]
        return load_config(str(REPO / "configs/ucm.yaml"), [*over, *extra])

    def frozen_cfg(self) -> Any:
        """``configs/ucm_cpu.yaml`` (the frozen-head recipe) with the prepared images, on this device."""
        from hssal_ray.config import load_config

        s = self.sizes
        over = [
            f"data.root={self.data_dir / IMAGES_DIR}",
            f"data.image_size={s.image_size}",
            f"ssl.weights={self.data_dir / WEIGHTS_FILE}",
            f"data.mean={LITE0_MEAN_STD}",
            f"data.std={LITE0_MEAN_STD}",
            "resources.use_gpu=true",
            f"ssl.eval_batch_size={s.eval_batch}",
        ]
        if s.frozen_steps is not None:
            over += [f"ssl.steps_per_round={s.frozen_steps}", f"ssl.batch_size={s.batch}"]
        return load_config(str(REPO / "configs/ucm_cpu.yaml"), over)

    def mean_std(self, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
        from hssal_ray.data.transforms import default_mean_std
        from hssal_ray.packaged_weights import normalisation

        mean, std = normalisation(cfg)
        dm, ds = default_mean_std(cfg.data.bands)
        return np.asarray(mean or dm, np.float32), np.asarray(std or ds, np.float32)

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def peak_gib(self) -> float | None:
        import torch

        return _r(torch.cuda.max_memory_allocated() / 2**30, 3) if self.cuda else None

    def reset_peak(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def workers(self, share: float) -> int:
        """DataLoader worker processes for a loader with ``share`` of the CPUs (toy runs: 0, in-process)."""
        if self.args.workers is not None:
            return int(self.args.workers) if self.loader_ok else 0
        if self.toy or not self.loader_ok:
            return 0
        return max(1, int(share * max(1, (len(os.sched_getaffinity(0)) - 2))))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.cuda.OutOfMemoryError,)


def _free() -> None:
    """Return freed GPU memory to the device (cycles first: a caught exception's frames hold tensors)."""
    import torch

    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``; an out-of-memory or other error becomes ``{"status": ..., "error": ...}`` (run goes on)."""
    failure: dict[str, Any] | None = None
    try:
        return {"status": "ok", **fn()}
    except _oom_types() as e:
        failure = {"status": "oom", "error": str(e).splitlines()[0][:400]}
    except Exception as e:  # noqa: BLE001 - recorded, and the next section runs
        failure = {
            "status": "error",
            "error": f"{type(e).__name__}: {str(e)[:400]}",
            "traceback": traceback.format_exc().splitlines()[-12:],
        }
    _free()  # after the except blocks: their tracebacks no longer hold the tensors
    return failure
