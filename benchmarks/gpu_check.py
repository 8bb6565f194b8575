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
  the affinity matrix.
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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.gpu_check")

REPO = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.gpu_check"
IMAGES_DIR = "ucm"
WEIGHTS_FILE = "efficientnet_lite0.safetensors"
MANIFEST = "manifest.json"
LABEL_FRACTION = 0.08
LITE0 = "efficientnet_lite0"
LITE0_MEAN_STD = "[0.5,0.5,0.5]"  # packaged weights' normalisation (hssal_ray.packaged_weights.PACKAGED)
SECTIONS = ("train_throughput", "encode", "frozen_head", "kmeans", "knn", "finetune", "scoring")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size a run uses (``FULL`` on the GPU, ``TOY`` on CPU)."""

    image_size: int
    batch: int
    uratio: int
    eval_batch: int
    tp_warmup: int
    tp_steps: int
    ft_steps_max: int
    ft_steps_min: int
    frozen_steps: int | None  # None: the recipe's own
    kmeans_n: tuple[int, ...]
    kmeans_d: int
    kmeans_k: int
    kmeans_iters: int
    kmeans_cpu_max_n: int
    hal_budget: int
    knn_n: int
    knn_d: int
    knn_check_queries: int
    centres: int
    min_s: dict[str, float]  # seconds a section needs at least; skipped when less is left


FULL = Sizes(
    image_size=224,
    batch=32,
    uratio=7,
    eval_batch=256,
    tp_warmup=5,
    tp_steps=20,
    ft_steps_max=2000,
    ft_steps_min=100,
    frozen_steps=None,
    kmeans_n=(1_000_000, 10_000_000),
    kmeans_d=512,
    kmeans_k=1000,
    kmeans_iters=10,
    kmeans_cpu_max_n=1_000_000,
    hal_budget=1000,
    knn_n=1_000_000,
    knn_d=1280,
    knn_check_queries=4096,
    centres=1000,
    min_s={
        "train_throughput": 40,
        "encode": 15,
        "frozen_head": 15,
        "kmeans": 40,
        "knn": 25,
        "finetune": 45,
        "scoring": 10,
    },
)
TOY = Sizes(
    image_size=32,
    batch=2,
    uratio=2,
    eval_batch=16,
    tp_warmup=1,
    tp_steps=2,
    ft_steps_max=4,
    ft_steps_min=4,
    frozen_steps=20,
    kmeans_n=(2000, 4000),
    kmeans_d=32,
    kmeans_k=16,
    kmeans_iters=5,
    kmeans_cpu_max_n=2000,
    hal_budget=30,
    knn_n=1500,
    knn_d=32,
    knn_check_queries=200,
    centres=20,
    min_s=dict.fromkeys(SECTIONS, 0.0),
)


# --------------------------------------------------------------------------------------- prepare


def prepare(
    dest: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    per_class: int = 100,
    size: int = 224,
    quality: int = 85,
    max_mib: float = 48.0,
) -> dict[str, Any]:
    """Copy a UCM-layout image tree (resized JPEGs) and the Lite0 weights into ``dest`` for the GPU machine.

    Images keep their relative paths (``class/name``; a non-JPEG source gets a ``.jpg`` name), so the
    product's seeded split is the one of the source. The weights are the packaged ImageNet
    EfficientNet-Lite0 (``ssl.weights: package:efficientnet_lite0``) mapped onto timm's layout and
    checked tensor by tensor (:func:`hssal_ray.packaged_weights.packaged_backbone_state`), written as
    safetensors: the GPU machine lacks the package, and a local file loads through
    :func:`hssal_ray.models.load_weights`.

    Raises:
        DataError: No class folders with images under ``source``, or the result exceeds ``max_mib``.
    """
    from PIL import Image
    from safetensors.torch import save_file

    from hssal_ray.data.decode import decode_image
    from hssal_ray.errors import DataError
    from hssal_ray.packaged_weights import PACKAGED, packaged_backbone_state

    src, out = Path(source), Path(dest)
    classes = (
        sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        if src.is_dir()
        else []
    )
    files = {
        c: sorted(f for f in (src / c).iterdir() if f.suffix.lower() in _IMAGE_EXT)[:per_class]
        for c in classes
    }
    files = {c: f for c, f in files.items() if f}
    if not files:
        raise DataError(f"no class folders with images under {src} (expected SOURCE/<class>/<image>)")
    if (out / IMAGES_DIR).exists():
        shutil.rmtree(out / IMAGES_DIR)
    total = 0
    for c, fs in files.items():
        (out / IMAGES_DIR / c).mkdir(parents=True, exist_ok=True)
        for f in fs:
            chw = decode_image(f.read_bytes(), bands=3, size=size)  # the product's decode + resize
            target = out / IMAGES_DIR / c / (f.stem + ".jpg")
            Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(
                target, "JPEG", quality=quality
            )
            total += target.stat().st_size
    state = packaged_backbone_state(f"package:{LITE0}", LITE0)
    wpath = out / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(wpath))
    wbytes = wpath.stat().st_size
    mib = (total + wbytes) / 2**20
    if mib > max_mib:
        raise DataError(
            f"{out} holds {mib:.1f} MiB (limit {max_mib}): use fewer --per-class images or a lower --quality"
        )
    pkg = PACKAGED[LITE0].pip_name
    manifest = {
        "source": str(src.resolve()),
        "classes": len(files),
        "images": sum(len(f) for f in files.values()),
        "per_class": per_class,
        "image_size": size,
        "jpeg_quality": quality,
        "image_bytes": total,
        "weights": {
            "file": WEIGHTS_FILE,
            "bytes": wbytes,
            "sha256": hashlib.sha256(wpath.read_bytes()).hexdigest(),
            "tensors": len(state),
            "from": f"package:{LITE0} ({pkg} {_dist_version(pkg)}), mapped onto timm's {LITE0}",
        },
        "total_mib": round(mib, 2),
        "git_commit": _git_commit(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------- helpers


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


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


# --------------------------------------------------------------------------- batches and loaders


class AugSteps:
    """Batch ``b`` of a training stream made by the product's per-sample augmentation, as uint8 tensors.

    Rows and ``aug_seed`` come from :func:`hssal_ray.data.pipeline.make_schedule`; view ``i`` of a
    sample uses seed ``aug_seed * 4 + i`` (int64, as the pipeline's decode task); the pixels are
    :func:`hssal_ray.data.transforms.augment_image`'s (what ``augment_batch`` calls per sample).
    Normalisation ``(x / 255 - mean) / std`` is done on the device (:class:`Normalise`).
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        seeds: np.ndarray,
        labels: np.ndarray,
        views: tuple[str, ...],
        batch: int,
    ) -> None:
        self.images, self.rows, self.seeds, self.labels = images, rows, seeds, labels
        self.views, self.batch = views, batch
        self.crop = int(images.shape[-1])

    def __len__(self) -> int:
        return len(self.rows) // self.batch

    def __getitem__(self, b: int) -> dict[str, Any]:
        import torch

        from hssal_ray.data.transforms import augment_image

        if not 0 <= b < len(self):
            raise IndexError(b)
        sl = slice(b * self.batch, (b + 1) * self.batch)
        rows, seeds = self.rows[sl], self.seeds[sl]
        out: dict[str, Any] = {"label": torch.from_numpy(self.labels[rows].astype(np.int64))}
        for i, view in enumerate(self.views):
            vs = seeds * 4 + i  # the decode task's augment_batch(images, seeds * 4 + i)
            kind = view.split("_", 1)[0]
            arr = np.stack(
                [
                    augment_image(self.images[r], int(s), kind, self.crop)
                    for r, s in zip(rows, vs, strict=True)
                ]
            )
            out[f"x_{view}"] = torch.from_numpy(arr)
        return out


def _identity(x: Any) -> Any:
    return x


class _Blobs:
    """Three 64 MiB uint8 tensors: what a training batch puts through the workers' shared memory."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.full((64 << 20,), i, dtype=torch.uint8)


def _loader_check() -> tuple[bool, str]:
    """Whether DataLoader worker processes can hand batches over (a small ``/dev/shm`` breaks them)."""
    try:
        shm = os.statvfs("/dev/shm")
        free = f"/dev/shm {shm.f_bavail * shm.f_frsize / 2**30:.1f} GiB free"
    except OSError as e:
        free = f"/dev/shm: {e}"
    try:
        got = [int(b[0]) for b in _loader(_Blobs(), 2, pin=False)]
        if got != [0, 1, 2]:
            raise RuntimeError(f"batches came back as {got}")
    except Exception as e:  # noqa: BLE001 - then every loader runs in-process
        return (
            False,
            f"worker processes failed ({type(e).__name__}: {str(e)[:200]}); {free}; loaders in-process",
        )
    return True, f"worker processes ok; {free}"


def _loader(ds: Any, workers: int, *, pin: bool, collate: Callable[[Any], Any] | None = None) -> Any:
    """A DataLoader yielding ``ds[0], ds[1], ...`` (each item is a whole batch) from ``workers`` processes.

    Workers are forked (they share the decoded images; they never touch CUDA).
    """
    import multiprocessing

    import torch

    kw: dict[str, Any] = {}
    if workers:
        kw.update(prefetch_factor=2, multiprocessing_context=multiprocessing.get_context("fork"))
    if collate is not None:
        kw["collate_fn"] = collate
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin, **kw)


class Normalise:
    """``x / 255`` normalised by the weights' mean/std, in float32, on the device (uint8 in)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, device: Any) -> None:
        import torch

        self.scale = torch.from_numpy(1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self.shift = torch.from_numpy(mean / std).view(1, -1, 1, 1).to(device)

    def __call__(self, x: Any) -> Any:
        return x.float() * self.scale - self.shift


class Shard:
    """A training stream as the worker loop reads it (``iter_torch_batches``), fed by a DataLoader.

    Images arrive as uint8 (pinned on CUDA), are normalised on the device, and the stream ends early
    (``StopIteration`` in the worker loop: it checkpoints and returns) once ``deadline`` passes.
    """

    def __init__(self, ds: AugSteps, workers: int, device: Any, norm: Normalise, deadline: float) -> None:
        self.ds, self.workers, self.device, self.norm, self.deadline = ds, workers, device, norm, deadline
        self.stopped_early = False

    def iter_torch_batches(
        self, *, batch_size: int, drop_last: bool = True, prefetch_batches: int = 2
    ) -> Iterator[dict[str, Any]]:
        if batch_size != self.ds.batch:
            raise ValueError(f"stream made for batches of {self.ds.batch}, asked for {batch_size}")
        for b in _loader(self.ds, self.workers, pin=self.device.type == "cuda"):
            if time.perf_counter() > self.deadline:
                self.stopped_early = True
                return
            yield {
                k: self.norm(v.to(self.device, non_blocking=True)) if k.startswith("x_") else v
                for k, v in b.items()
            }


def schedule(run: Run, rows: np.ndarray, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (image indices) and ``aug_seed`` of the product's seeded training stream over ``rows``."""
    import pyarrow as pa

    from hssal_ray.data.pipeline import make_schedule

    table = run.catalog.table.take(pa.array(rows)).select(["sample_id", "source", "row", "label"])
    sched = make_schedule(table, length, seed)
    where = {s: i for i, s in enumerate(run.ids)}
    idx = np.fromiter((where[s] for s in sched.column("sample_id").to_pylist()), dtype=np.int64, count=length)
    return idx, sched.column("aug_seed").to_numpy()


def streams(run: Run, cfg: Any, steps: int, round_idx: int = 0) -> tuple[AugSteps, AugSteps]:
    """The labeled (weak) and unlabeled (weak + strong) streams of ``steps`` steps, seeded as the trainer."""
    from hssal_ray.rounds import derive_seed

    bs, ub = cfg.ssl.batch_size, cfg.ssl.batch_size * cfg.ssl.uratio
    rl, sl = schedule(run, run.lab_rows, steps * bs, derive_seed(cfg.seed, round_idx, "labeled"))
    ru, su = schedule(run, run.pool_rows, steps * ub, derive_seed(cfg.seed, round_idx, "unlabeled"))
    return AugSteps(run.images, rl, sl, run.labels, ("weak",), bs), AugSteps(
        run.images, ru, su, run.labels, ("weak", "strong"), ub
    )


# ------------------------------------------------------------------------------------ sections


def _throughput_case(run: Run, cfg: Any, raw: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Time the product's worker loop (``run_worker``, no Ray) cycling the prepared step batches."""
    from benchmarks._worker_steps import run_worker_steps
    from hssal_ray.rounds import amp_dtype

    s = run.sizes
    norm = Normalise(*run.mean_std(cfg), run.dev)
    labeled = [{"x_weak": norm(bl["x_weak"].to(run.dev)), "label": bl["label"]} for bl, _ in raw]
    unlabeled = [
        {
            "x_weak": norm(bu["x_weak"].to(run.dev)),
            "x_strong": norm(bu["x_strong"].to(run.dev)),
            "label": bu["label"],
        }
        for _, bu in raw
    ]
    amp = amp_dtype(cfg.ssl.amp, run.dev)

    def after(step: int) -> None:
        if step == s.tp_warmup:
            run.sync()
            run.reset_peak()

    rows = run_worker_steps(
        cfg, run.num_classes, run.dev, labeled, unlabeled, s.tp_warmup + s.tp_steps, on_step=after
    )
    run.sync()
    times = [r["step_s"] for r in rows]
    losses = [_r(r["loss"]) for r in rows]
    dt = float(np.sum(times[s.tp_warmup :]))
    per_step = cfg.ssl.batch_size * (1 + 2 * cfg.ssl.uratio)
    q = max(1, len(losses) // 4)
    return {
        "weights": "packaged ImageNet (prepared file)" if cfg.ssl.weights else "random init",
        "amp": str(amp).replace("torch.", "") if amp is not None else "none",
        "channels_last": cfg.ssl.channels_last,
        "images_per_step": per_step,
        "first_step_s": _r(times[0], 3),
        "step_ms": _r(1000 * dt / s.tp_steps, 2),
        "img_s": _r(per_step * s.tp_steps / dt, 1),
        "peak_gpu_mem_gib": run.peak_gib(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_went_down": bool(np.mean(losses[-q:]) < np.mean(losses[:q])),
        "losses": losses,
    }


def sec_train_throughput(run: Run) -> dict[str, Any]:
    """FixMatch ``train_step`` images/s for Lite0 and ResNet-50, profile settings and fp32."""
    import torch

    s = run.sizes
    n_batches = 4
    base = run.profile_cfg()
    lab, unl = streams(run, base, n_batches)
    raw = [(lab[i], unl[i]) for i in range(n_batches)]  # real augmented batches, made once
    rows: list[dict[str, Any]] = []
    for model in (LITE0, "resnet50"):
        for case, extra in (("profile", ()), ("fp32", ("ssl.amp=none", "ssl.channels_last=false"))):
            cfg = run.profile_cfg(model, extra)
            row = {"model": model, "case": case}
            row.update(guarded(lambda cfg=cfg: _throughput_case(run, cfg, raw)))
            if case == "profile" and row["status"] == "ok":
                run.step_s[model] = row["step_ms"] / 1000.0
            rows.append(row)
            log.info("train_throughput %s %s: %s img/s", model, case, row.get("img_s", row["status"]))
            _free()
    return {
        "settings": {
            "profile": "configs/ucm.yaml",
            "batch": base.ssl.batch_size,
            "uratio": base.ssl.uratio,
            "image_size": base.data.image_size,
            "warmup_steps": s.tp_warmup,
            "timed_steps": s.tp_steps,
            "batches": f"{n_batches} real augmented step batches (the trainer's seeded streams), "
            "on the device, cycled",
            "torch_compile": False,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "timing": "the worker loop's own time inside train_step (ssl.train_loop.run_worker, no Ray); "
            "the step's metrics sync the host once per step",
            "note": "images/s counts labeled + weak + strong images per step",
        },
        "rows": rows,
    }


def sec_encode(run: Run) -> dict[str, Any]:
    """The encode actor on every image's clean + weak + strong views; the backbone alone; CPU augmentation."""
    import torch

    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.frozen.store import Encoder, view_names

    cfg = run.frozen_cfg()
    views = view_names(cfg.frozen.embed_views)
    mean, std = run.mean_std(cfg)
    enc = Encoder(config_to_dict(cfg), views)
    n, bs = len(run.ids), cfg.ssl.eval_batch_size
    seeds = np.arange(n, dtype=np.int64) * 7919 + 17  # the store's per-image seeds (manifest position)

    class Views:
        def __len__(self) -> int:
            return math.ceil(n / bs)

        def __getitem__(self, b: int) -> dict[str, Any]:
            rows = np.arange(b * bs, min(n, (b + 1) * bs))
            out: dict[str, Any] = {"sample_id": run.ids[rows]}
            for i, v in enumerate(views):
                x = augment_batch(
                    run.images[rows], seeds[rows] * 4 + i, kind=v.split("_", 1)[0], mean=mean, std=std
                )
                out[f"x_{v}"] = torch.from_numpy(x)  # tensors leave a worker through shared memory
            return out

    def arrays(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    t = time.perf_counter()
    enc(arrays(Views()[0]))  # warm-up (kernel selection), not timed
    run.sync()
    first_s = time.perf_counter() - t
    loader = _loader(Views(), run.workers(1.0), pin=False, collate=_identity)
    feats: dict[str, list[np.ndarray]] = {v: [] for v in views}
    enc_s = 0.0
    run.reset_peak()
    t_all = time.perf_counter()
    for batch in loader:
        batch = arrays(batch)
        t = time.perf_counter()
        table = enc(batch)
        enc_s += time.perf_counter() - t
        for v in views:
            col = table.column(v).combine_chunks()  # fixed-size lists of the features
            feats[v].append(col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1))
    wall = time.perf_counter() - t_all
    run.views = {v: np.concatenate(f).astype(np.float16) for v, f in feats.items()}
    dim = int(run.views["none"].shape[1])

    # the backbone alone on a device-resident batch: NCHW (what the actor feeds) vs channels_last
    x = torch.from_numpy(augment_batch(run.images[:bs], seeds[:bs], kind="none", mean=mean, std=std)).to(
        run.dev
    )
    amp = torch.bfloat16 if run.cuda else None
    fwd: dict[str, float] = {}
    for fmt in ("nchw", "channels_last"):
        bb = enc.backbone.to(memory_format=torch.channels_last) if fmt == "channels_last" else enc.backbone
        xi = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
        with (
            torch.inference_mode(),
            torch.autocast(run.dev.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            bb(xi)
            run.sync()
            t = time.perf_counter()
            reps = 2 if run.toy else 10
            for _ in range(reps):
                bb(xi)
            run.sync()
        fwd[f"backbone_{fmt}_img_s"] = _r(reps * len(xi) / (time.perf_counter() - t), 1)

    # the CPU side: the product's augmentation + normalisation per image, one process
    cpu = {}
    m = min(64, n)
    for kind in ("none", "weak", "strong"):
        t = time.perf_counter()
        augment_batch(run.images[:m], seeds[:m], kind=kind, mean=mean, std=std)
        cpu[f"cpu_aug_{kind}_ms_per_image"] = _r(1000 * (time.perf_counter() - t) / m, 3)
    return {
        "settings": {
            "recipe": "configs/ucm_cpu.yaml (frozen Lite0, packaged ImageNet weights)",
            "views": list(views),
            "batch": bs,
            "amp": "bf16" if run.cuda and cfg.ssl.amp != "none" else "none",
            "channels_last_in_actor": False,
            "loader_workers": run.workers(1.0),
        },
        "images": n,
        "dim": dim,
        "first_call_s": _r(first_s, 3),
        "encoder_s": _r(enc_s, 3),
        "img_s_per_view": _r(n * len(views) / enc_s, 1),
        "images_s_all_views": _r(n / enc_s, 1),
        "wall_s": _r(wall, 2),
        "img_s_per_view_end_to_end": _r(n * len(views) / wall, 1),
        "peak_gpu_mem_gib": run.peak_gib(),
        **fwd,
        **cpu,
        "note": "encoder_s: the actor's calls (host float32 batch -> device -> features -> host fp16); "
        "end_to_end adds the CPU augmentation in DataLoader workers",
    }


def sec_frozen_head(run: Run) -> dict[str, Any]:
    """The frozen-head recipe (``train_head``) on the encoded features, 8% labels: test accuracy."""
    from hssal_ray.frozen.head import predict_views, train_head
    from hssal_ray.rounds import derive_seed

    if run.views is None:
        raise RuntimeError("needs the encode section's features (it did not run)")
    cfg = run.frozen_cfg()
    t = time.perf_counter()
    state, metrics = train_head(
        cfg,
        run.views,
        run.lab_rows,
        run.labels[run.lab_rows],
        run.pool_rows,
        run.labels[run.pool_rows],
        run.num_classes,
        stats_rows=run.train_rows,
        seed=derive_seed(cfg.seed, 0, "train"),
        ssl_on=True,
    )
    train_s = time.perf_counter() - t
    y = run.labels[run.test_rows]
    heads = {"ema": state.ema.module, "online": state.model}
    acc = {
        w: float((predict_views(h, run.views, run.test_rows, cfg.frozen.tta_views).argmax(1) == y).mean())
        for w, h in heads.items()
    }
    run.frozen_acc = acc[cfg.ssl.eval_model]
    s, f = cfg.ssl, cfg.frozen
    return {
        "settings": {
            "recipe": "configs/ucm_cpu.yaml",
            "steps": s.steps_per_round,
            "batch": s.batch_size,
            "uratio": s.uratio,
            "lr": s.lr,
            "weight_decay": s.weight_decay,
            "pseudo_labels": f.pseudo_labels,
            "graph_k": f.graph_k,
            "graph_alpha": f.graph_alpha,
            "graph_balance": f.graph_balance,
            "tta_views": f.tta_views,
            "feature_norm": f.feature_norm,
            "eval_model": s.eval_model,
            "device": "cpu (train_head trains on CPU)",
            "cpu_threads": __import__("torch").get_num_threads(),
            "labeled": len(run.lab_rows),
            "pool": len(run.pool_rows),
            "test": len(run.test_rows),
        },
        "train_s": _r(train_s, 2),
        "test_accuracy": _r(run.frozen_acc),
        "test_accuracy_other": _r(acc["online" if s.eval_model == "ema" else "ema"]),
        "metrics": {k: _r(v) for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)},
    }


def _clustered(n: int, d: int, centres: int, device: Any, seed: int, dtype: Any = None) -> Any:
    """``(n, d)`` unit rows around ``centres`` random unit centres, generated on ``device`` in blocks."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float16
    g = torch.Generator(device=device).manual_seed(seed)
    c = F.normalize(torch.randn(centres, d, generator=g, device=device), dim=1)
    out = torch.empty((n, d), dtype=dtype, device=device)
    step = 1 << 19
    for s in range(0, n, step):
        m = min(step, n - s)
        lab = torch.randint(0, centres, (m,), generator=g, device=device)
        x = c[lab] + torch.randn(m, d, generator=g, device=device) / math.sqrt(d)
        out[s : s + m] = F.normalize(x, dim=1).to(dtype)
    return out


def sec_kmeans(run: Run) -> dict[str, Any]:
    """Torch k-means on GPU (device- and host-resident rows) and CPU; HAL on CUDA; the cupy hand-off."""
    import torch

    from hssal_ray.query import HierarchicalQuery, Pool
    from hssal_ray.query.backends import assign_chunked, make_kmeans

    s = run.sizes
    rows: list[dict[str, Any]] = []

    def fit(x: Any, device: str | None) -> dict[str, Any]:
        run.reset_peak()
        base = torch.cuda.memory_allocated() if run.cuda else 0
        t = time.perf_counter()
        km = make_kmeans(
            "torch", n_clusters=s.kmeans_k, max_iter=s.kmeans_iters, random_state=0, tol=0.0, device=device
        ).fit(x)
        run.sync()
        dt = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() - base if run.cuda else None
        return {
            "fit_s": _r(dt, 3),
            "n_iter": int(km.n_iter_),
            "s_per_pass": _r(dt / (km.n_iter_ + 1), 4),
            "inertia": _r(km.inertia_, 1),
            "peak_gpu_mem_gib_over_data": None if peak is None else _r(peak / 2**30, 3),
            "centres": km.cluster_centers_,
        }

    for n in s.kmeans_n:

        def one(n: int = n) -> dict[str, Any]:
            out: dict[str, Any] = {}
            x = _clustered(n, s.kmeans_d, s.centres, run.dev, seed=n)
            run.sync()
            out["data_gib"] = _r(x.numel() * x.element_size() / 2**30, 3)
            make_kmeans("torch", n_clusters=s.kmeans_k, max_iter=1, random_state=0).fit(x[: 20 * s.kmeans_k])
            r = fit(x, None)  # after a small warm-up fit (kernel selection, allocator)
            centres = r.pop("centres")
            out["device"] = {"where": str(run.dev), **r}
            t = time.perf_counter()
            assign_chunked(x, centres)
            run.sync()
            out["assign_pass_s"] = _r(time.perf_counter() - t, 3)
            # HAL's select on CUDA-resident embeddings (coarse k-means and assignment on the device)
            u = np.random.default_rng(n).random(n).astype(np.float32)
            pool = Pool(ids=np.arange(n), embeddings=x, scores={"u_badge": u})
            strat = HierarchicalQuery(kmeans_backend="torch", random_state=0)
            t = time.perf_counter()
            picks = strat.select(pool, s.hal_budget)
            out["hal_select_s"] = _r(time.perf_counter() - t, 3)
            info = strat.info_
            out["hal_info"] = {
                "coarse_k": int(info["coarse_k"]),
                "backend": info["backend"],
                "n_candidates": int(info["n_candidates"]),
                "seconds": {k: _r(v, 3) for k, v in info["seconds"].items()},
            }
            out["hal_picks"] = len(np.unique(picks))
            if n <= s.kmeans_cpu_max_n:
                xc = x.cpu()
                del pool, x
                _free()
                cpu = fit(xc, None)
                cpu.pop("centres")
                out["cpu"] = {"where": "cpu", "threads": torch.get_num_threads(), **cpu}
                if run.cuda:
                    host = fit(xc, "cuda")
                    host.pop("centres")
                    out["host_to_device"] = {"where": "host data, device=cuda (streamed per block)", **host}
                out["gpu_speedup_vs_cpu"] = _r(out["cpu"]["fit_s"] / out["device"]["fit_s"], 2)
            return out

        row = {"n": n, "d": s.kmeans_d}
        row.update(guarded(one))
        rows.append(row)
        log.info("kmeans n=%d: %s", n, row.get("device", row.get("status")))
        _free()
    return {
        "settings": {
            "backend": "torch (hssal_ray.query.backends.TorchKMeans) via make_kmeans",
            "k": s.kmeans_k,
            "max_iter": s.kmeans_iters,
            "tol": 0.0,
            "init": "k-means++ on init_size = max(2000, 20 k) rows",
            "chunk_size": 2048,
            "dtype": f"float16 rows (unit norm, clustered around {s.centres} centres), float32 blocks inside",
            "hal": f"HierarchicalQuery(kmeans_backend='torch').select(budget={s.hal_budget}), u_badge random",
            "cpu_backend_note": "faiss is not installed on the GPU machine: its CPU backend is torch",
        },
        "rows": rows,
        "cupy_handoff": guarded(lambda: _cupy_handoff(run)),
        "cuml_installed": importlib.util.find_spec("cuml") is not None,
    }


def _cupy_handoff(run: Run) -> dict[str, Any]:
    """``CumlKMeans._to_cupy``: fp16 CUDA tensors become float32 cupy arrays; float32 ones are shared."""
    import torch

    from hssal_ray.query.backends import CumlKMeans

    if not run.cuda:
        return {"skipped": "no CUDA device"}
    if importlib.util.find_spec("cupy") is None:
        return {"skipped": "cupy is not installed"}
    import cupy

    x16 = _clustered(8192, 64, 8, run.dev, seed=1)
    a = CumlKMeans._to_cupy(cupy, x16)
    x32 = x16.float().contiguous()
    b = CumlKMeans._to_cupy(cupy, x32)
    c = CumlKMeans._to_cupy(cupy, x16.cpu().numpy())
    same = bool(cupy.allclose(a, b)) and bool(cupy.allclose(b, c))
    return {
        "fp16_cuda_to": str(a.dtype),
        "float32_zero_copy": int(b.data.ptr) == int(x32.data_ptr()),
        "numpy_to": f"{c.dtype} on device {c.device.id}",
        "device_matches_torch": int(a.device.id) == torch.cuda.current_device(),
        "values_equal": same,
        "cupy_pool_used_mib": _r(cupy.get_default_memory_pool().used_bytes() / 2**20, 2),
        "cupy_version": cupy.__version__,
    }


def sec_knn(run: Run) -> dict[str, Any]:
    """The k-NN graph of ``knn_n`` x ``knn_d`` fp16 nodes: seconds, peak memory, recall, affinity."""
    import torch
    import torch.nn.functional as F

    from hssal_ray.frozen.knn_torch import affinity_from_neighbours, knn_cosine

    s = run.sizes
    k = run.frozen_cfg().frozen.graph_k
    x = _clustered(s.knn_n, s.knn_d, s.centres, run.dev, seed=7)
    dtype = torch.float16  # the GPU arithmetic, also in the CPU twin
    knn_cosine(x[:4096], k, device=run.dev, compute_dtype=dtype)  # warm-up
    run.reset_peak()
    base = torch.cuda.memory_allocated() if run.cuda else 0
    t = time.perf_counter()
    cos, idx = knn_cosine(x, k, device=run.dev, compute_dtype=dtype)
    run.sync()
    knn_s = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if run.cuda else None

    # recall against an exact float32 search of the same rows (queries vs every row, keys in blocks)
    q = np.sort(
        np.random.default_rng(0).choice(s.knn_n, size=min(s.knn_check_queries, s.knn_n), replace=False)
    )
    qt = torch.from_numpy(q).to(run.dev)
    xq = F.normalize(x[qt].float(), dim=1)
    best_v = torch.full((len(q), k), -float("inf"), device=run.dev)
    best_i = torch.zeros((len(q), k), dtype=torch.int64, device=run.dev)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        step = 1 << 17
        for s0 in range(0, s.knn_n, step):
            keys = F.normalize(x[s0 : s0 + step].float(), dim=1)
            sims = xq @ keys.T
            own = (qt >= s0) & (qt < s0 + keys.shape[0])
            sims[own.nonzero().flatten(), (qt[own] - s0)] = -float("inf")
            bv, bi = torch.topk(sims, min(k, keys.shape[0]), dim=1)
            v, i = torch.topk(torch.cat([best_v, bv], 1), k, dim=1)
            best_i = torch.gather(torch.cat([best_i, bi + s0], 1), 1, i)
            best_v = v
            del sims
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    exact_i, exact_v = best_i.cpu().numpy(), best_v.cpu().numpy()
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx[q], exact_i, strict=True)]))
    kth_gap = float(np.max(exact_v[:, -1] - cos[q, -1]))
    t = time.perf_counter()
    S = affinity_from_neighbours(cos, idx)
    aff_s = time.perf_counter() - t
    return {
        "settings": {
            "n": s.knn_n,
            "d": s.knn_d,
            "k": k,
            "input": f"float16 unit rows clustered around {s.centres} centres, on {run.dev}",
            "function": "hssal_ray.frozen.knn_torch.knn_cosine "
            "(float16 tiles, top k + 8 re-scored in float32)",
            "recall_check": f"{len(q)} random queries against an exact float32 search (TF32 off)",
        },
        "knn_s": _r(knn_s, 3),
        "peak_gpu_mem_gib_over_data": None if peak is None else _r(peak, 3),
        "recall_at_k": _r(recall, 5),
        "max_kth_cos_shortfall": _r(kth_gap, 6),
        "affinity_s": _r(aff_s, 3),
        "affinity_nnz": int(S.nnz),
    }


def sec_finetune(run: Run) -> dict[str, Any]:
    """Full FixMatch fine-tuning of Lite0 through the worker loop; the evaluation actor on the test split."""
    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.rounds import derive_seed
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl.train_loop import LocalContext, run_worker

    s = run.sizes
    base = run.profile_cfg()
    reserve = 0.0 if run.toy else s.min_s["scoring"] + 20.0  # evaluation + the scoring section
    cap = min(float(run.args.ft_max_s), run.remaining() - reserve)
    step_s = run.step_s.get(LITE0)
    if run.toy:
        steps = s.ft_steps_max
    else:
        # the loader, the first steps and the reports cost a little more than the bare step
        est = 1.3 * (step_s if step_s else 0.5)
        steps = int(min(s.ft_steps_max, run.args.ft_steps, cap / est))
        if steps < s.ft_steps_min:
            raise RuntimeError(
                f"only {cap:.0f} s left: {steps} steps would be below the minimum {s.ft_steps_min}"
            )
    cfg = run.profile_cfg(LITE0, [f"ssl.steps_per_round={steps}"])
    norm = Normalise(*run.mean_std(cfg), run.dev)
    lab, unl = streams(run, cfg, steps + 2)
    deadline = time.perf_counter() + (cap if not run.toy else 1e9)
    shards = {
        "labeled": Shard(lab, run.workers(0.15), run.dev, norm, deadline),
        "unlabeled": Shard(unl, run.workers(0.85), run.dev, norm, deadline),
    }

    class Ctx(LocalContext):
        def __init__(self, workdir: str) -> None:
            super().__init__(shards, workdir)
            self.device = run.dev
            self.reports: list[dict[str, Any]] = []

        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
            self.reports.append(dict(metrics))
            super().report(metrics, checkpoint_dir)

    config = {
        "experiment": config_to_dict(cfg),
        "num_classes": run.num_classes,
        "total_steps": steps,
        "init_dir": None,
        "round": 0,
        "ssl_on": True,
        "seed": derive_seed(cfg.seed, 0, "train"),
        "report_every": max(1, steps // 10),
        "threads_per_worker": max(1, int(cfg.resources.cpus_per_worker)),
        "fault_kill": None,
    }
    ctx = Ctx(str(run.work / "ft"))
    run.reset_peak()
    t = time.perf_counter()
    run_worker(config, ctx)
    run.sync()
    train_wall = time.perf_counter() - t
    peak = run.peak_gib()
    if ctx.checkpoint_dir is None:
        raise RuntimeError("the worker loop reported no checkpoint")
    run.ft_ckpt = ctx.checkpoint_dir
    curve = _windows(ctx.reports)

    # the evaluation actor on the test split (clean view, the product's CPU preprocessing)
    scorer = Scorer(run.ft_ckpt, config_to_dict(cfg), run.num_classes, mode="eval")
    mean, std = run.mean_std(cfg)
    hits = hits_other = 0
    t = time.perf_counter()
    for b in range(0, len(run.test_rows), cfg.ssl.eval_batch_size):
        rows = run.test_rows[b : b + cfg.ssl.eval_batch_size]
        x = augment_batch(run.images[rows], np.zeros(len(rows), np.int64), kind="none", mean=mean, std=std)
        out = scorer({"sample_id": run.ids[rows], "label": run.labels[rows], "x_none": x})
        hits += int((out.column("pred").to_numpy() == run.labels[rows]).sum())
        hits_other += int((out.column("pred_other").to_numpy() == run.labels[rows]).sum())
    eval_s = time.perf_counter() - t
    acc, acc_other = hits / len(run.test_rows), hits_other / len(run.test_rows)
    last = ctx.reports[-1] if ctx.reports else {}
    res = {
        "settings": {
            "profile": "configs/ucm.yaml",
            "model": f"{LITE0}, packaged ImageNet weights, finetune=full",
            "steps_planned": steps,
            "steps_per_round_in_profile": base.ssl.steps_per_round,
            "batch": cfg.ssl.batch_size,
            "uratio": cfg.ssl.uratio,
            "lr": cfg.ssl.lr,
            "lr_schedule": cfg.ssl.lr_schedule,
            "weight_decay": cfg.ssl.weight_decay,
            "p_cutoff": cfg.ssl.p_cutoff,
            "ema_m": cfg.ssl.ema_m,
            "amp": cfg.ssl.amp,
            "channels_last": cfg.ssl.channels_last,
            "labeled": len(run.lab_rows),
            "pool": len(run.pool_rows),
            "test": len(run.test_rows),
            "loader_workers": {k: v.workers for k, v in shards.items()},
            "time_cap_s": _r(cap, 1),
            "step_s_estimate": None if step_s is None else _r(step_s, 4),
            "loop": "hssal_ray.ssl.train_loop.run_worker (Ray Train's worker loop), in-process context",
        },
        "steps_run": int(last.get("step", 0)),
        "stopped_early": any(sh.stopped_early for sh in shards.values()),
        "train_wall_s": _r(train_wall, 2),
        "images_per_s": _r(last.get("images_per_s_per_worker", float("nan")), 1),
        "data_wait_s": _r(last.get("data_wait_s", float("nan")), 2),
        "step_s": _r(last.get("step_s", float("nan")), 2),
        "peak_gpu_mem_gib": peak,
        "loss_curve": curve,
        "pseudo_label_acc": _r(last.get("pseudo_label_acc", float("nan"))),
        "loss_went_down": bool(len(curve) >= 2 and curve[-1]["loss"] < curve[0]["loss"]),
        "eval_s": _r(eval_s, 3),
        "test_accuracy": _r(acc),
        "test_accuracy_other": _r(acc_other),
        "eval_model": cfg.ssl.eval_model,
    }
    if run.frozen_acc is not None:
        res["frozen_head_test_accuracy"] = _r(run.frozen_acc)
        res["finetune_minus_frozen_points"] = _r(100 * (acc - run.frozen_acc), 2)
    return res


def _windows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`benchmarks._worker_steps.window_means` of the worker loop's reports, rounded for the result."""
    from benchmarks._worker_steps import window_means

    return [{k: v if k == "steps" else _r(v) for k, v in w.items()} for w in window_means(reports)]


def sec_scoring(run: Run) -> dict[str, Any]:
    """The scoring actor on the pool (clean + strong view): rows/s, forward vs scores table."""
    import torch

    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.rounds import save_checkpoint_dir
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl.train_loop import build_train_state

    cfg = run.profile_cfg(LITE0)
    ckpt = run.ft_ckpt
    source = "the finetune section's checkpoint"
    if ckpt is None:
        state = build_train_state(cfg, run.num_classes, torch.device("cpu"), total_steps=1)
        ckpt = str(run.work / "score_ckpt")
        save_checkpoint_dir(state, ckpt, {"step": 0})
        source = "packaged Lite0 weights, untrained head (no finetune checkpoint)"
    scorer = Scorer(ckpt, config_to_dict(cfg), run.num_classes, mode="score")
    mean, std = run.mean_std(cfg)
    bs = cfg.ssl.eval_batch_size
    rows_all = run.pool_rows
    seeds = rows_all.astype(np.int64) * 7919 + 17
    t = time.perf_counter()
    batches = []
    for b in range(0, len(rows_all), bs):
        rows, sd = rows_all[b : b + bs], seeds[b : b + bs]
        batches.append(
            {
                "sample_id": run.ids[rows],
                "x_none": augment_batch(run.images[rows], sd * 4, kind="none", mean=mean, std=std),
                "x_strong": augment_batch(run.images[rows], sd * 4 + 1, kind="strong", mean=mean, std=std),
            }
        )
    prep_s = time.perf_counter() - t
    scorer(batches[0])  # warm-up
    run.sync()
    run.reset_peak()
    fwd_s = total_s = 0.0
    n_rows = 0
    cols: list[str] = []
    for batch in batches:
        t = time.perf_counter()
        scorer._forward(batch["x_none"])
        scorer._forward(batch["x_strong"])
        run.sync()
        fwd_s += time.perf_counter() - t
        t = time.perf_counter()
        table = scorer(batch)
        total_s += time.perf_counter() - t
        n_rows += table.num_rows
        cols = table.column_names
    return {
        "settings": {
            "weights": source,
            "batch": bs,
            "views": ["none", "strong"],
            "amp": cfg.ssl.amp,
            "channels_last": cfg.ssl.channels_last,
        },
        "rows": n_rows,
        "rows_s": _r(n_rows / total_s, 1),
        "forward_only_rows_s": _r(n_rows / fwd_s, 1),
        "cpu_prep_s": _r(prep_s, 2),
        "peak_gpu_mem_gib": run.peak_gib(),
        "columns": cols,
        "note": "rows_s: Scorer.__call__ (two forwards + the scores table on CPU); "
        "forward_only: the two forwards",
    }


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


# ------------------------------------------------------------------------------------ markdown


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(res: dict[str, Any]) -> str:
    """The ``.md`` file: device, then one block per section (settings, figures, or why it is missing)."""
    env = res.get("environment", {})
    lines = ["# GPU check (`python -m benchmarks.gpu_check`)", ""]
    if res.get("toy"):
        lines += [
            "**TOY CPU RUN**: the same code at toy sizes; these numbers measure nothing about a GPU.",
            "",
        ]
    lines += [
        f"- command: `{res.get('command')}`",
        f"- started (UTC): {res.get('started_utc')}, elapsed {res.get('elapsed_s')} s "
        f"of a {res.get('budget_s')} s budget",
        f"- device: {env.get('gpu') or env.get('device')} ({env.get('gpu_memory_gib', '-')} GiB), "
        f"torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, "
        f"Python {env.get('python')}, {env.get('cpus')} CPUs",
        f"- Ray imported: {_fmt(res.get('ray_imported'))}; git commit {env.get('git_commit')}",
    ]
    if res.get("loader_check"):
        lines.append(f"- DataLoader workers: {res['loader_check']}")
    d = res.get("data")
    if d:
        lines.append(
            f"- data: {d['images']} images ({d['classes']} classes) at "
            f"{d['manifest'].get('image_size')} px, train {d['train']} / test {d['test']}; "
            f"{d['labeled']} labels ({d['labeled_fraction']:.0%} of train)"
        )
    for name, sec in res.get("sections", {}).items():
        lines += ["", f"## {name}", ""]
        if sec.get("status") != "ok":
            lines.append(f"**{sec.get('status')}**: {sec.get('reason') or sec.get('error')}")
            continue
        if sec.get("kept_from_run"):
            lines += [f"(kept from the run started {sec['kept_from_run']}: `--keep`)", ""]
        if "settings" in sec:
            lines.append("settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sec["settings"].items()))
            lines.append("")
        if name == "train_throughput":
            lines.append(
                _table(
                    sec["rows"],
                    [
                        "model",
                        "case",
                        "status",
                        "amp",
                        "channels_last",
                        "img_s",
                        "step_ms",
                        "first_step_s",
                        "peak_gpu_mem_gib",
                        "loss_first",
                        "loss_last",
                        "loss_went_down",
                    ],
                )
            )
        elif name == "kmeans":
            flat = []
            for r in sec["rows"]:
                for where in ("device", "host_to_device", "cpu"):
                    if where in r:
                        flat.append(
                            {
                                "n": r["n"],
                                "d": r["d"],
                                "status": r["status"],
                                **r[where],
                                "hal_select_s": r.get("hal_select_s") if where == "device" else None,
                                "assign_pass_s": r.get("assign_pass_s") if where == "device" else None,
                            }
                        )
                if r["status"] != "ok":
                    flat.append({"n": r["n"], "d": r["d"], "status": f"{r['status']}: {r.get('error')}"})
            lines.append(
                _table(
                    flat,
                    [
                        "n",
                        "d",
                        "status",
                        "where",
                        "fit_s",
                        "n_iter",
                        "s_per_pass",
                        "peak_gpu_mem_gib_over_data",
                        "assign_pass_s",
                        "hal_select_s",
                    ],
                )
            )
            lines += [
                "",
                f"cupy hand-off: {json.dumps(sec.get('cupy_handoff'), default=str)}; "
                f"cuML installed: {_fmt(sec.get('cuml_installed'))}",
            ]
        elif name == "finetune":
            keys = [
                "steps_run",
                "stopped_early",
                "train_wall_s",
                "images_per_s",
                "data_wait_s",
                "step_s",
                "peak_gpu_mem_gib",
                "test_accuracy",
                "test_accuracy_other",
                "frozen_head_test_accuracy",
                "finetune_minus_frozen_points",
                "loss_went_down",
            ]
            lines.append(_table([sec], keys))
            lines += ["", _table(sec["loss_curve"], ["steps", "loss", "sup_loss", "unsup_loss", "mask_rate"])]
        else:
            flat = {
                k: v
                for k, v in sec.items()
                if k not in ("settings", "status", "metrics", "columns") and not isinstance(v, list | dict)
            }
            lines.append(_table([flat], list(flat)))
    return "\n".join(lines) + "\n"


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
