"""The training streams: the product's seeded schedules and per-sample augmentation, through DataLoaders."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from benchmarks._gpu.run import Run


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
