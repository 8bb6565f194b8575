"""Build and fit one round's Ray Train ``TorchTrainer`` (driver side).

The driver turns the labeled set and the unlabeled pool into two seeded, ordered *schedules*
of manifest rows, hands them to Ray Data (decode + weak/strong augmentation in workers), and
Ray Train splits them across the DDP workers (gloo on CPU, nccl on GPU).

Ctrl-C: Ray Train's ``fit()`` (2.60) installs its own SIGINT handler, which asks the controller to abort
and then returns or exits 0, and never puts the driver's handler back; every later Ctrl-C of the
loop (scoring, querying, waiting for labels) then went to that handler and was lost. ``fit_round``
runs ``fit()`` with :func:`_interruptible`'s handler instead (the same abort of the workers, then
``KeyboardInterrupt``: the CLI's "interrupted" line and exit 130, as in every other stage) and restores
the driver's handler afterwards (:func:`_sigint_restored`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from hssal_ray import _io, faults
from hssal_ray.config import ExperimentConfig, config_to_dict
from hssal_ray.data.pipeline import BAD_DIR, decode_settings, make_schedule, stream
from hssal_ray.rounds import copy_checkpoint_files, derive_seed, ssl_active

__all__ = ["TrainResult", "fit_round"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a round's training produced.

    Attributes:
        checkpoint_dir: Local/URI directory holding ``model``/``ema`` safetensors.
        metrics: The last metrics rank 0 reported (losses, mask rate, images/s, ...).
    """

    checkpoint_dir: str
    metrics: dict[str, Any]


def fit_round(
    cfg: ExperimentConfig,
    *,
    root: str,
    kind: str,
    labeled: pa.Table,
    pool: pa.Table,
    num_classes: int,
    round_idx: int,
    run_dir: str,
    init_dir: str | None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train one round with Ray Train and copy its final checkpoint to ``round_XXX/checkpoint``.

    Args:
        cfg: The experiment config.
        root: Dataset root.
        kind: Catalog kind.
        labeled: Manifest rows of labeled samples with their (oracle) labels in ``label``.
        pool: Manifest rows of the unlabeled pool (``label`` = ground truth if known, used only
            for the pseudo-label accuracy diagnostic, never for training).
        num_classes: Number of classes.
        round_idx: Round number.
        run_dir: Run directory.
        init_dir: Previous round's checkpoint directory for a warm start, or None.
        callbacks: ``ray.train.UserCallback`` instances for the Ray Train run (e.g. a benchmark's
            report timer); not used by the in-driver executor.
    """
    import ray.train
    from ray.data import DataContext
    from ray.train.torch import TorchTrainer

    ssl_on = ssl_active(cfg, pool.num_rows, round_idx)
    world = cfg.resources.num_workers
    steps = cfg.ssl.steps_per_round
    bs = cfg.ssl.batch_size
    slack = 2  # spare batches per worker in case a sample fails to decode
    rdir = _io.join(run_dir, f"round_{round_idx:03d}")
    bad_dir = _io.join(run_dir, BAD_DIR)
    DataContext.get_current().execution_options.preserve_order = True
    common = dict(drop_ids=True, **decode_settings(cfg, root=root, kind=kind, bad_dir=bad_dir))
    sched_l = make_schedule(
        labeled, (steps + slack) * bs * world, derive_seed(cfg.seed, round_idx, "labeled")
    )
    datasets = {"labeled": stream(sched_l, views=("weak",), batch_size=bs, **common)}
    if ssl_on:
        ub = bs * cfg.ssl.uratio
        sched_u = make_schedule(
            pool, (steps + slack) * ub * world, derive_seed(cfg.seed, round_idx, "unlabeled")
        )
        datasets["unlabeled"] = stream(sched_u, views=("weak", "strong"), batch_size=ub, **common)
    else:
        datasets["unlabeled"] = datasets["labeled"].limit(0)

    storage = _io.join(rdir, "ray_train")
    if not _io.is_uri(storage):
        storage = os.path.abspath(storage)
        shutil.rmtree(storage, ignore_errors=True)  # a killed attempt restarts the stage cleanly
    elif _io.exists(storage):
        _io.remove(storage)
    train_config = {
        "experiment": config_to_dict(cfg),
        "num_classes": num_classes,
        "total_steps": steps,
        "init_dir": init_dir,
        "round": round_idx,
        "ssl_on": ssl_on,
        "seed": derive_seed(cfg.seed, round_idx, "train"),
        # every report is a ~2 s barrier on CPU: a few per round are enough for progress
        "report_every": max(25, steps // 10),
        "threads_per_worker": max(1, int(cfg.resources.cpus_per_worker)),
        # testing hook, forwarded from the driver's environment (see hssal_ray.faults)
        "fault_kill": faults.worker_spec(),
    }
    out = _io.join(rdir, "checkpoint")
    if cfg.resources.in_driver():
        return _fit_local(train_config, datasets, out, round_idx)
    trainer = _interruptible(TorchTrainer)(
        _entry,
        train_loop_config=train_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=world,
            use_gpu=cfg.resources.use_gpu,
            resources_per_worker={
                "CPU": cfg.resources.cpus_per_worker,
                **({"GPU": 1} if cfg.resources.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks) or None,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )
    with _sigint_restored():
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"round {round_idx}: training reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        copy_checkpoint_files(d, out)
    metrics = dict(result.metrics or {})
    return TrainResult(checkpoint_dir=out, metrics=metrics)


def _abort_then_interrupt(abort: Callable[[], None], signum: int, frame: Any) -> None:
    """The driver's SIGINT handler while Ray Train runs: abort the worker group, then stop the loop.

    A second Ctrl-C while the abort waits goes to Python's own handler and stops at once.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        abort()
    except Exception as e:  # the controller exits as it aborts (RayActorError), or was gone already
        log.debug("Ray Train abort on SIGINT: %s", e)
    raise KeyboardInterrupt


def _interruptible(trainer_cls: type) -> type:
    """``trainer_cls`` whose ``fit()`` turns Ctrl-C into an abort of its workers and a ``KeyboardInterrupt``.

    Overrides Ray Train's private ``_register_sigint_handler(controller)`` (called by ``fit()`` in the
    main thread only); ``tests/unit/ssl/test_trainer_sigint.py`` fails if a Ray upgrade renames it.
    """

    class InterruptibleTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        def _register_sigint_handler(self, controller: Any) -> None:
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
                return  # a background job (`cmd &`) ignores Ctrl-C, inside fit() too
            import ray

            def abort() -> None:
                ray.get(controller.abort.remote(), timeout=60)

            signal.signal(signal.SIGINT, lambda s, f: _abort_then_interrupt(abort, s, f))

    InterruptibleTrainer.__name__ = InterruptibleTrainer.__qualname__ = f"Interruptible{trainer_cls.__name__}"
    return InterruptibleTrainer


@contextlib.contextmanager
def _sigint_restored() -> Iterator[None]:
    """Put this process's SIGINT handler back as it was when the block exits (main thread only)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if before is not None and signal.getsignal(signal.SIGINT) is not before:
            signal.signal(signal.SIGINT, before)


def _entry(config: dict[str, Any]) -> None:
    from hssal_ray.ssl.train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def _fit_local(
    train_config: dict[str, Any], datasets: dict[str, Any], out: str, round_idx: int
) -> TrainResult:
    """The worker loop in this process (``resources.executor=driver``), on the same Ray Data streams."""
    import tempfile

    import torch

    from hssal_ray.ssl.train_loop import LocalContext, run_worker

    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = LocalContext(datasets, tmp)
            run_worker(train_config, ctx)
            if ctx.checkpoint_dir is None:
                raise RuntimeError(f"round {round_idx}: training reported no checkpoint")
            copy_checkpoint_files(ctx.checkpoint_dir, out)
            return TrainResult(checkpoint_dir=out, metrics=dict(ctx.metrics))
    finally:
        torch.set_num_threads(threads)  # the worker loop sets its own thread count
