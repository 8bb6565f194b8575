"""The Ray Train per-worker loop: stream labeled + unlabeled shards, FixMatch steps, checkpoints.

Follows the Ray example shape: ``train_loop_per_worker(config)`` -> ``get_dataset_shard`` ->
plain step functions (:mod:`hssal_ray.ssl.steps`) -> ``ray.train.report(metrics, checkpoint=...)``,
resuming from ``ray.train.get_checkpoint()`` after a worker failure with the step count
continuing.

Checkpoints have the layout of :mod:`hssal_ray.rounds.checkpoint` (also the round's ``checkpoint/``).
The plumbing both learners share (seeds, AMP, optimiser, checkpoint I/O, metric means) is in
:mod:`hssal_ray.rounds`; this module holds only the worker's side of Ray Train.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from hssal_ray import faults
from hssal_ray.config import ExperimentConfig, config_from_dict
from hssal_ray.models import model_from_config
from hssal_ray.rounds import (
    MetricMeans,
    amp_dtype,
    apply_warm_start,
    build_optimization,
    checkpoint_meta,
    load_weights,
    round_ema_initial_weight,
    save_checkpoint_dir,
    warm_start_of,
)
from hssal_ray.ssl.steps import TrainState, train_step

__all__ = ["train_loop_per_worker", "run_worker", "LocalContext", "build_train_state"]

log = logging.getLogger(__name__)


def build_train_state(
    cfg: ExperimentConfig, num_classes: int, device: torch.device, total_steps: int
) -> TrainState:
    """Fresh model, EMA, optimizer and cosine schedule for one round."""
    model = model_from_config(cfg, num_classes).to(device)
    if cfg.ssl.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimization(cfg, model, total_steps)
    return TrainState.create(model, optimizer, scheduler, cfg.ssl, num_classes=num_classes)


def _batches(shard: Any, batch_size: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
    it = shard.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2)
    for i, b in enumerate(it):
        if i < skip:
            continue
        yield b


class _RayTrainContext:
    """What a worker needs from Ray Train (rank, device, shards, reports, the restart checkpoint)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def shard(self, name: str) -> Any:
        return self._train.get_dataset_shard(name)

    def restart_checkpoint(self) -> Any:
        return self._train.get_checkpoint()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        kw = {"find_unused_parameters": False}
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kw) if self.world > 1 else model

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        ckpt = self._train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=ckpt)


class LocalContext:
    """The same worker loop in this process, without Ray Train (one CPU worker: no worker-group start-up).

    ``datasets`` are the Ray Datasets Ray Train would have split; :attr:`metrics` and
    :attr:`checkpoint_dir` hold the last report (the checkpoint files are copied, the caller owns
    the temporary directory :attr:`workdir`).
    """

    rank, world = 0, 1

    def __init__(self, datasets: dict[str, Any], workdir: str) -> None:
        self.datasets = datasets
        self.device = torch.device("cpu")
        self.workdir = workdir
        self.metrics: dict[str, Any] = {}
        self.checkpoint_dir: str | None = None

    def shard(self, name: str) -> Any:
        return self.datasets[name]

    def restart_checkpoint(self) -> Any:
        return None  # a failed local round is rerun as a whole by the loop (the stage is idempotent)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import shutil

        self.metrics = dict(metrics)
        if checkpoint_dir:
            dest = os.path.join(self.workdir, "checkpoint")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoint_dir = dest


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (one call per worker): :func:`run_worker` with Ray Train's context."""
    run_worker(config, _RayTrainContext())


def run_worker(config: dict[str, Any], ctx: Any) -> None:
    """One worker's round: build or warm-start the state, stream the shards, train, report checkpoints.

    ``config`` keys: ``experiment`` (the resolved config as a dict), ``num_classes``,
    ``total_steps``, ``init_dir`` (previous round's checkpoint directory for a warm start, or
    None), ``round``, ``ssl_on``, ``seed``, ``report_every``. ``ctx`` is Ray Train's context or a
    :class:`LocalContext`.
    """
    cfg = config_from_dict(config["experiment"])
    total_steps = int(config["total_steps"])
    rank, world, device = ctx.rank, ctx.world, ctx.device
    torch.manual_seed(int(config["seed"]) + rank)
    torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))

    state = build_train_state(cfg, int(config["num_classes"]), device, total_steps)
    init_dir = config.get("init_dir")
    if init_dir:
        apply_warm_start(state, warm_start_of(init_dir))
    ckpt = ctx.restart_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            apply_warm_start(state, {"model": load_weights(d, "online"), "ema": load_weights(d, "ema")})
            state.load_state_dict(
                torch.load(os.path.join(d, "train_state.pt"), map_location=device, weights_only=True),
                include_models=False,
            )
        log.info("rank %d resumed from checkpoint at step %d", rank, state.step)
    state.model = ctx.prepare(state.model)

    ssl_on = bool(config["ssl_on"])  # decided once, by the driver (rounds.ssl_active)
    bs = cfg.ssl.batch_size
    it_l = _batches(ctx.shard("labeled"), bs, state.step)
    it_u = _batches(ctx.shard("unlabeled"), bs * cfg.ssl.uratio, state.step) if ssl_on else None
    amp = amp_dtype(cfg.ssl.amp, device)
    report_every = max(1, int(config.get("report_every", 50)))
    ckpt_every = cfg.ssl.checkpoint_every
    means = MetricMeans()
    images = 0
    t0 = time.perf_counter()
    start_step = state.step
    # where a round's seconds go (benchmarks/round_overhead.py): waiting for data, inside steps,
    # and the wall-clock times the loop started and ended (the rest of the stage is overhead)
    timing = {"worker_started_at": time.time(), "data_wait_s": 0.0, "step_s": 0.0}
    from tqdm.auto import tqdm

    # a bar only in the driver on a terminal (disable=None: off when stderr is not a TTY)
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc=f"round {config.get('round')} train",
        unit="step",
        leave=False,
        disable=None if isinstance(ctx, LocalContext) else True,
    )
    while state.step < total_steps:
        try:
            tw = time.perf_counter()
            bl = next(it_l)
            bu = next(it_u) if it_u is not None else None
            timing["data_wait_s"] += time.perf_counter() - tw
        except StopIteration:
            log.warning("rank %d: data stream ended at step %d of %d", rank, state.step, total_steps)
            break
        batch_l = {"x": bl["x_weak"], "y": bl["label"]}
        batch_u = None
        if bu is not None:
            batch_u = {"x_weak": bu["x_weak"], "x_strong": bu["x_strong"], "y": bu["label"]}
        ts = time.perf_counter()
        m = train_step(
            state,
            batch_l,
            batch_u,
            cfg.ssl,
            device,
            amp_dtype=amp,
            channels_last=cfg.ssl.channels_last,
            allow_cpu_amp=amp is not None,
        )
        timing["step_s"] += time.perf_counter() - ts
        bar.update(1)
        faults.kill_worker(rank, state.step, config.get("fault_kill"))
        means.add(m)
        images += len(bl["label"]) + (2 * len(bu["label"]) if bu is not None else 0)
        last = state.step >= total_steps
        want_ckpt = last or (ckpt_every > 0 and state.step % ckpt_every == 0)
        if state.step % report_every == 0 or want_ckpt:
            elapsed = time.perf_counter() - t0
            metrics = means.means()
            metrics.update(
                step=state.step,
                global_step=state.step_offset + state.step,
                ema_initial_weight=round_ema_initial_weight(cfg, state),
                steps_run=state.step - start_step,
                images_per_s_per_worker=images / max(elapsed, 1e-9),
                world_size=world,
                **timing,
                worker_ended_at=time.time(),
            )
            if want_ckpt and rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint_dir(state, tmp, checkpoint_meta(state, config.get("round"), metrics))
                    ctx.report(metrics, tmp)
            else:
                ctx.report(metrics)
            if rank == 0:
                log.info(
                    "round %s step %d/%d loss %.3f mask %.2f %.0f img/s/worker",
                    config.get("round"),
                    state.step,
                    total_steps,
                    metrics.get("loss", float("nan")),
                    metrics.get("mask_rate", float("nan")),
                    metrics["images_per_s_per_worker"],
                )
    bar.close()
    if state.step < total_steps:
        # Stream ran dry: still leave a final checkpoint so the round can go on.
        metrics = {
            "step": state.step,
            "global_step": state.step_offset + state.step,
            "ema_initial_weight": round_ema_initial_weight(cfg, state),
            "world_size": world,
        }
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint_dir(state, tmp, checkpoint_meta(state, config.get("round"), metrics))
                ctx.report(metrics, tmp)
        else:
            ctx.report(metrics)
