"""Constants and sizes of a GPU check run (``FULL`` on the GPU, ``TOY`` on CPU), and small helpers."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))
