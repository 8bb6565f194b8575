"""Pool scoring and evaluation: a Ray Data actor pool holding the round's evaluation model.

The evaluation model is the EMA or the online weights (``ssl.eval_model``). Each actor loads them
once (``__init__``) and maps batches of decoded
images to per-sample ``sample_id``, L2-normalised fp16 ``embedding``, ``probs``, ``pred`` and
the uncertainty columns (``u_badge``, ``u_entropy``, ...). Results are written straight from
the workers as Parquet parts (``round_XXX/scores.parquet/``): the driver never holds the pool.

Faults: a scoring actor that dies (node lost, OOM kill, ``os._exit``) is restarted and its
unfinished batches are retried (``ACTOR_MAX_RESTARTS`` / ``ACTOR_MAX_TASK_RETRIES``); a
retried write task rewrites its own Parquet part, so every pool id is written exactly once.
Actors that keep dying past those bounds end the stage with an :class:`~hssal_ray.errors.ActorPoolError`
(:func:`pool_failures`) that says what to try, instead of Ray's restarts going on forever (its default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hssal_ray import _io, faults
from hssal_ray.config import ExperimentConfig, config_from_dict, config_to_dict
from hssal_ray.data.pipeline import stream_blocks, stream_for
from hssal_ray.errors import ActorPoolError
from hssal_ray.rounds import (
    WEIGHT_FILES,
    amp_dtype,
    classification_metrics,
    load_weights,
    scores_strong_view,
    scores_table,
)

__all__ = [
    "Scorer",
    "score_pool",
    "evaluate_split",
    "ACTOR_MAX_RESTARTS",
    "ACTOR_MAX_TASK_RETRIES",
    "ACTOR_BYTES",
    "actor_pool_size",
    "auto_pool_size",
    "runtime_pool_size",
    "pool_failures",
    "map_on_actors",
]

log = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = 4
"""How often Ray restarts a dead actor of a pool (scoring, encode, predict: :func:`map_on_actors`); finite,
so that a deterministic crash fails the stage."""
ACTOR_MAX_TASK_RETRIES = 4
"""How often a batch that was running on a dead actor of a pool is retried."""


@contextlib.contextmanager
def pool_failures(what: str, after: str, knobs: str, holds: str | None = None) -> Iterator[None]:
    """An actor pool that died past its restarts (Ray's ``RayActorError``) as an :class:`ActorPoolError`.

    ``what`` names the stage ("the encode"), ``after`` says what is kept and how to go on, ``knobs`` what
    sets the pool's size and batch, ``holds`` what each actor keeps in memory (default: a copy of the model).
    An actor whose constructor raised is not restarted: the error says so, with the constructor's own error.
    """
    import ray.exceptions

    try:
        yield
    except ray.exceptions.RayActorError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        if e.actor_init_failed:
            raise ActorPoolError(
                f"{what}: its Ray actors failed to start. {after} Ray said: {lines[-1]}"
            ) from e
        holds = (
            holds
            or f"a copy of the model, about {ACTOR_BYTES / 2**30:g} GiB for the packaged Lite0 at 224 px"
        )
        raise ActorPoolError(
            f"{what}: its Ray actors kept dying ({ACTOR_MAX_RESTARTS} restarts of an actor and "
            f"{ACTOR_MAX_TASK_RETRIES} retries of a batch used up). The usual causes are memory (each actor "
            f"holds {holds}: lower {knobs}) or an input that crashes an actor; the Ray logs of the dead "
            f"workers say which. {after} Ray said: {lines[0]}"
        ) from e


class Scorer:
    """Ray Data actor: the evaluation model in memory, batches of images -> scores (or eval predictions).

    In ``eval`` mode the other weights of the checkpoint (online when evaluating the EMA, and the
    other way round) are evaluated on the same batch too (``pred_other``): the diagnostic that shows
    whether the EMA lags the weights it averages.

    Args:
        ckpt_dir: Checkpoint directory (local path or URI) with ``ema.safetensors`` and ``model.safetensors``.
        experiment: The resolved config as a dict.
        num_classes: Number of classes.
        mode: ``score`` (pool scores table) or ``eval`` (``sample_id, label, pred``).
        fault_kill: Testing hook, see :func:`hssal_ray.faults.kill_actor` (forwarded from the driver's
            ``HSSAL_FAULT_KILL_SCORER``).
    """

    def __init__(
        self,
        ckpt_dir: str,
        experiment: dict[str, Any],
        num_classes: int,
        mode: str = "score",
        fault_kill: str | None = None,
    ) -> None:
        from hssal_ray.models import model_from_config

        cfg = config_from_dict(experiment)
        self.cfg = cfg
        self.mode = mode
        self.fault_kill = fault_kill
        self.batches = 0
        self.device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)

        def load(which: str) -> torch.nn.Module:
            model = model_from_config(cfg, num_classes, with_weights=False)
            model.load_state_dict(load_weights(ckpt_dir, which))
            model = model.eval().to(self.device)
            return model.to(memory_format=torch.channels_last) if cfg.ssl.channels_last else model

        self.model = load(cfg.ssl.eval_model)
        other = "online" if cfg.ssl.eval_model == "ema" else "ema"
        has_other = _io.exists(_io.join(ckpt_dir, WEIGHT_FILES[other]))
        self.other = load(other) if mode == "eval" and has_other else None
        self.amp = amp_dtype(cfg.ssl.amp, self.device)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """A batch of images on the model's device, in its memory format."""
        # a writable copy of Ray Data's read-only batch: torch warns about read-only buffers
        t = torch.from_numpy(np.require(x, requirements=("C", "W"))).to(self.device, non_blocking=True)
        if self.cfg.ssl.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @torch.inference_mode()
    def _forward(self, x: np.ndarray, model: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
        t = self._tensor(x)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            emb, logits = (model or self.model).forward_features_logits(t)
        emb = torch.nn.functional.normalize(emb.float(), dim=1)
        probs = torch.softmax(logits.float(), dim=1)
        return emb.cpu().numpy(), probs.cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self.batches += 1
        faults.kill_actor(self.batches, self.fault_kill)
        emb, probs = self._forward(batch["x_none"])
        if self.mode == "eval":
            pred = probs.argmax(1).astype(np.int32)
            other = self._forward(batch["x_none"], self.other)[1].argmax(1) if self.other else pred
            return pa.table(
                {
                    "sample_id": pa.array([str(s) for s in batch["sample_id"]], pa.string()),
                    "label": pa.array(np.asarray(batch["label"], dtype=np.int32)),
                    "pred": pa.array(pred),
                    "pred_other": pa.array(np.asarray(other, dtype=np.int32)),
                }
            )
        probs_strong = self._forward(batch["x_strong"])[1] if "x_strong" in batch else None
        return scores_table(batch["sample_id"], emb, probs, probs_strong, self.cfg.ssl.p_cutoff)


def actor_pool_size(requested: int, cluster_cpus: float, use_gpu: bool) -> int:
    """Scoring actors to start: on CPU, at most ``cluster_cpus - 1``, so decode and write tasks keep a CPU.

    With every CPU held by a scoring actor, Ray Data cannot schedule the read/write tasks and the
    stage hangs (Ray warns "does not have any available CPUs"); GPU actors hold a GPU, not the CPUs.
    """
    if use_gpu or requested < cluster_cpus:
        return requested
    capped = max(1, int(cluster_cpus) - 1)
    if capped < requested:
        log.warning(
            "resources.score_actors=%d would hold all %g CPUs of the cluster (Ray Data would hang); "
            "using %d scoring actor(s)",
            requested,
            cluster_cpus,
            capped,
        )
    return capped


# What one CPU inference actor holds at its peak, for an auto pool (:func:`auto_pool_size`): measured on the
# frozen path's encode actor of the default recipe (Lite0, 224 px, ssl.eval_batch_size 64, clean + 2 weak +
# 2 strong views) while it encoded UCM: peak RSS 2.2 GB, of which 1.0 GB private (the decoded batch,
# activations, queued blocks), the rest shared libraries. Predict's and the image path's scoring actors (one
# or two views) hold less. A larger backbone or batch needs more: set the pool's size.
ACTOR_BYTES = 2 * 2**30


def auto_pool_size(
    requested: int,
    *,
    use_gpu: bool,
    cpus: float,
    gpus: float = 0.0,
    memory: float = float("inf"),
    host_cores: int | None = None,
    in_trial: bool = False,
    blocks: int | None = None,
) -> tuple[int, str]:
    """An inference pool (the frozen encode, the image path's scoring, predict) and why: ``(actors, why)``.

    On CPUs Ray Data runs the decode inside each actor, so an actor keeps one core busy and the pass
    scales with the pool. ``requested`` > 0 is taken as given (on CPUs at most ``cpus - 1``:
    :func:`actor_pool_size`). 0 (auto): one actor per free GPU with ``use_gpu``; on CPUs one per free CPU
    less one (left for Ray Data's tasks), counting at most ``host_cores`` on a runtime that is this host
    alone, and no more than ``memory`` holds at :data:`ACTOR_BYTES` each; inside a Tune trial one (the
    trial's footprint holds one CPU for it); never more than the stream's ``blocks`` (an actor takes a
    block at a time: more would only load the model and wait).

    Args:
        requested: The pool's size as set (``resources.encode_actors``, ``resources.score_actors``,
            ``predict --actors``), 0 = auto.
        use_gpu: GPU actors.
        cpus: CPUs of the runtime free now.
        gpus: GPUs of the runtime free now.
        memory: Bytes of Ray's ``memory`` resource free now.
        host_cores: Cores this process may use, when the runtime is this host alone (else None).
        in_trial: Whether the pass runs inside a placement group (a Tune trial).
        blocks: Blocks of the stream the pool maps (None: not known).
    """
    if requested > 0:
        return actor_pool_size(requested, cpus, use_gpu), f"set to {requested}"
    if in_trial:
        return 1, "auto: inside a Tune trial, which holds one CPU for it"
    if use_gpu:
        n, why = max(1, int(gpus)), f"auto: one per GPU ({gpus:g} free)"
    else:
        usable = cpus if host_cores is None else min(cpus, float(host_cores))
        n = max(1, int(usable) - 1)
        by_memory = max(1, int(memory // ACTOR_BYTES)) if memory < float("inf") else n
        why = f"auto: {usable:g} free CPU(s) less one"
        if by_memory < n:
            n, why = by_memory, f"{why}, memory for {by_memory} at {ACTOR_BYTES / 2**30:g} GiB each"
    if blocks is not None and blocks < n:
        n, why = max(1, blocks), f"{why}, at most one per block of the stream ({blocks})"
    return n, why


def runtime_pool_size(requested: int, use_gpu: bool, blocks: int | None = None) -> tuple[int, str]:
    """:func:`auto_pool_size` from what the running Ray runtime has free now."""
    import ray
    import ray.util

    free = ray.available_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    local = len(nodes) == 1 and nodes[0].get("NodeID") == ray.get_runtime_context().get_node_id()
    return auto_pool_size(
        requested,
        use_gpu=use_gpu,
        cpus=float(free.get("CPU", 0.0)),
        gpus=float(free.get("GPU", 0.0)),
        memory=float(free.get("memory", float("inf"))),
        host_cores=len(os.sched_getaffinity(0)) if local else None,
        in_trial=ray.util.get_current_placement_group() is not None,
        blocks=blocks,
    )


_SCORER_KNOBS = "resources.score_actors or ssl.eval_batch_size"
"""What sizes the :class:`Scorer` pool and its batches (named by :func:`pool_failures`)."""


def map_on_actors(ds: Any, fn: type, **kwargs: Any) -> Any:
    """``ds.map_batches(fn, **kwargs)`` on actors restarted at most :data:`ACTOR_MAX_RESTARTS` times.

    Ray Data's own defaults are unbounded (-1: an actor that dies at every batch is restarted forever).
    Ray 2.60 takes the bounds only as extra remote args, which it warns are deprecated while naming no
    parameter to use instead; that one warning is silenced here (check again when Ray is upgraded: 2.64
    removes them).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            fn, max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=ACTOR_MAX_TASK_RETRIES, **kwargs
        )


def _on_actors(ds: Any, cfg: ExperimentConfig, ckpt_dir: str, num_classes: int, mode: str, rows: int) -> Any:
    """The decode stream of ``rows`` rows mapped by a pool of :class:`Scorer` actors (a lazy Ray Dataset of
    result tables)."""
    import ray
    import ray.data

    fault = faults.scorer_spec() if mode == "score" else None
    r = cfg.resources
    if r.score_actors:
        actors = actor_pool_size(r.score_actors, float(ray.cluster_resources().get("CPU", 0.0)), r.use_gpu)
        why = f"resources.score_actors={r.score_actors}"
    else:  # auto: sized from what the runtime has free now (training has given its workers back)
        actors, why = runtime_pool_size(0, r.use_gpu, blocks=stream_blocks(rows, cfg.data.decode_batch_size))
    log.info("%s: %d %s actor(s) (%s)", mode, actors, "GPU" if r.use_gpu else "CPU", why)
    return map_on_actors(
        ds,
        Scorer,
        fn_constructor_kwargs=dict(
            ckpt_dir=ckpt_dir,
            experiment=config_to_dict(cfg),
            num_classes=num_classes,
            mode=mode,
            fault_kill=fault,
        ),
        batch_size=cfg.ssl.eval_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if cfg.resources.use_gpu else 0,
        num_cpus=1,
    )


def _in_driver(ds: Any, cfg: ExperimentConfig, ckpt_dir: str, num_classes: int, mode: str) -> list[pa.Table]:
    """The scorer in this process over the decode stream (``resources.executor=driver``)."""
    threads = torch.get_num_threads()
    try:
        scorer = Scorer(ckpt_dir, config_to_dict(cfg), num_classes, mode=mode)
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        from tqdm.auto import tqdm

        it = ds.iter_batches(batch_size=cfg.ssl.eval_batch_size, batch_format="numpy")
        out = []
        with tqdm(desc=mode, unit="img", leave=False, disable=None) as bar:  # a bar on a terminal only
            for batch in it:
                out.append(scorer(batch))
                bar.update(out[-1].num_rows)
        return out
    finally:
        torch.set_num_threads(threads)


def score_pool(
    cfg: ExperimentConfig,
    pool: pa.Table,
    *,
    root: str,
    kind: str,
    ckpt_dir: str,
    num_classes: int,
    run_dir: str,
    out_path: str,
) -> None:
    """Score the unlabeled pool and write ``out_path`` (a directory of Parquet parts).

    A strong view is scored too when the query needs it (:func:`hssal_ray.rounds.scores_strong_view`).
    With ``resources.executor=driver`` the scorer runs in this process and writes one part file,
    atomically; otherwise the actors write one part per block.
    """
    views = ("none", "strong") if scores_strong_view(cfg) else ("none",)
    ds = stream_for(cfg, pool, root=root, kind=kind, views=views, run_dir=run_dir)
    if cfg.resources.in_driver():
        tables = _in_driver(ds, cfg, ckpt_dir, num_classes, "score")
        if _io.exists(out_path):
            _io.remove(out_path)
        _io.atomic_write_parquet(_io.join(out_path, "part-00000.parquet"), pa.concat_tables(tables))
        return
    ds = _on_actors(ds, cfg, ckpt_dir, num_classes, "score", pool.num_rows)
    again = "Rerunning the command scores this round's pool again."
    lost = pool_failures("scoring the pool", again, _SCORER_KNOBS)
    if _io.is_uri(out_path):
        if _io.exists(out_path):
            _io.remove(out_path)
        with lost:
            ds.write_parquet(out_path, use_dictionary=False)
        return
    tmp = out_path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # no dictionary encoding: fp16 list columns read ~4x faster (benchmarks/query_speed notes)
    with lost:
        ds.write_parquet(os.path.abspath(tmp), use_dictionary=False)
    shutil.rmtree(out_path, ignore_errors=True)
    os.replace(tmp, out_path)


def evaluate_split(
    cfg: ExperimentConfig,
    table: pa.Table,
    *,
    root: str,
    kind: str,
    ckpt_dir: str,
    num_classes: int,
    run_dir: str,
) -> dict[str, Any]:
    """Accuracy of the evaluation model (``ssl.eval_model``) on the rows of ``table`` (e.g. the test split).

    Also returns ``test_accuracy_ema`` and ``test_accuracy_online``: both weights of the checkpoint.
    """
    ds = stream_for(cfg, table, root=root, kind=kind, views=("none",), run_dir=run_dir)
    if cfg.resources.in_driver():
        tables = _in_driver(ds, cfg, ckpt_dir, num_classes, "eval")
    else:
        import ray

        ds = _on_actors(ds, cfg, ckpt_dir, num_classes, "eval", table.num_rows)
        again = "Rerunning the command resumes at this round's evaluation."
        with pool_failures("the evaluation", again, _SCORER_KNOBS):
            tables = ray.get(ds.select_columns(["label", "pred", "pred_other"]).to_arrow_refs())
    if not tables:
        return classification_metrics(np.zeros(0, np.int64), np.zeros(0, np.int64), num_classes)
    t = pa.concat_tables(tables)
    y, p, q = (t.column(c).to_numpy() for c in ("label", "pred", "pred_other"))
    return classification_metrics(y, p, num_classes, other=q, eval_model=cfg.ssl.eval_model)
