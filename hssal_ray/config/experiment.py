"""Config sections of where a run goes and its sweeps: ``resources.*`` and ``tune.*``, and the
whole :class:`ExperimentConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hssal_ray import _io
from hssal_ray.config._base import RUNTIME, _check, _runtime
from hssal_ray.config.frozen import FrozenConfig
from hssal_ray.config.loop import LoopConfig, OracleConfig, QueryConfig
from hssal_ray.config.training import DataConfig, SSLConfig


@dataclass(frozen=True)
class ResourcesConfig:
    """Where things run (kept apart from the science settings).

    Args:
        address: Ray address (``auto``, ``ray://...``); ``None`` starts a local runtime.
        num_cpus: CPUs of a local runtime (``None`` = all).
        num_workers: Ray Train workers (DDP ranks).
        use_gpu: One GPU per training worker and per scoring actor.
        cpus_per_worker: CPUs reserved per training worker.
        score_actors: Actors of the image path's scoring and evaluation each round (one backbone
            each, one GPU each with ``use_gpu``). 0 = auto, as ``encode_actors``: one per free GPU,
            else one per free CPU less one (memory permitting), one inside a Tune trial; sized when
            each stage starts, from what the runtime has free then. With ``executor: auto`` on a
            local runtime, 0 and 1 both run in the driver for one CPU training worker.
        encode_actors: Actors of the frozen path's one-time encode (one backbone each; on CPUs each
            decodes and encodes on one core). 0 = auto: one per GPU with ``use_gpu``, else one per
            free CPU less one, as many as memory holds at ~2 GiB each (one inside a Tune trial).
        max_failures: Ray Train restarts from the last checkpoint after a worker failure.
        object_store_memory: Bytes for a local runtime's object store (``None`` = Ray's default).
        executor: Where the model runs. ``ray``: training as a Ray Train ``TorchTrainer`` and
            scoring/evaluation in a Ray Data actor pool. ``driver``: the same worker loop and
            the same scorer in the driver process, fed by the same Ray Data decode streams (no
            worker-group or actor start-up each round; no automatic worker
            restarts: a failed stage is rerun by the loop). ``auto`` = ``driver`` for one CPU
            training worker and one scoring actor (or auto) on a local runtime, else ``ray``.
        store_shards: ``ssl.finetune=frozen`` beyond one machine: ``>= 2`` builds the k-NN graph
            (exactly) and scores each round on that many Ray actors, each holding one row range
            of the embedding store (:mod:`hssal_ray.frozen.sharded`); the store must be on a path
            every node reads (or a URI). ``0``: everything in the driver. With ``use_gpu`` the
            graph actors search on GPUs (one each, or an equal share of the cluster's).
    """

    address: str | None = _runtime(None)
    num_cpus: int | None = _runtime(None)
    num_workers: int = 1  # science: the global batch is num_workers * ssl.batch_size
    use_gpu: bool = _runtime(False)
    cpus_per_worker: float = _runtime(1.0)
    score_actors: int = _runtime(0)
    encode_actors: int = _runtime(0)
    max_failures: int = _runtime(2)
    object_store_memory: int | None = _runtime(None)
    executor: Literal["auto", "ray", "driver"] = _runtime("auto")
    store_shards: int = _runtime(0)

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "resources.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0")
        _check(self.score_actors >= 0, "resources.score_actors", "must be >= 0 (0 = auto)")
        _check(self.encode_actors >= 0, "resources.encode_actors", "must be >= 0 (0 = auto)")
        _check(self.max_failures >= 0, "resources.max_failures", "must be >= 0")
        _check(self.num_cpus is None or self.num_cpus >= 1, "resources.num_cpus", "must be >= 1")
        _check(self.store_shards >= 0, "resources.store_shards", "must be >= 0")

    def trial_score_actors(self) -> int:
        """Scoring actors a Tune trial holds: as set, or one for auto (``scoring.auto_pool_size`` gives a
        trial's auto pool one actor)."""
        return self.score_actors or 1

    def in_driver(self) -> bool:
        """Whether training, scoring and evaluation run in the driver process (see ``executor``)."""
        import os

        if self.executor != "auto":
            return self.executor == "driver"
        one = self.num_workers == 1 and self.score_actors <= 1 and not self.use_gpu
        return one and not (self.address or os.environ.get("RAY_ADDRESS"))


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweep over the whole loop.

    Args:
        num_samples: Samples drawn from the search space (grid values multiply).
        scheduler: ``asha`` stops weak trials early with rounds as the time axis.
        metric: ``auc`` (area under the learning curve) or ``final_accuracy``.
        grace_period: ASHA's minimum rounds before stopping a trial.
        reduction_factor: ASHA's reduction factor.
        max_concurrent_trials: At most this many trials at once (0 = as resources allow).
        cpus_per_trial: CPUs per trial.
        gpus_per_trial: GPUs per trial (fractions allowed).
        search_space: Dotted config keys to ``{grid: [...]}`` / ``{choice: [...]}`` /
            ``{uniform: [lo, hi]}`` / ``{loguniform: [lo, hi]}``.
        storage: Where Tune keeps its experiment state (default: ``<run_dir>/tune``).
    """

    num_samples: int = 1
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: Literal["auc", "final_accuracy"] = "auc"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent_trials: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    search_space: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples", "must be >= 1")
        _check(self.grace_period >= 1, "tune.grace_period", "must be >= 1")
        _check(self.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
        _check(self.max_concurrent_trials >= 0, "tune.max_concurrent_trials", "must be >= 0")
        _check(self.cpus_per_trial > 0, "tune.cpus_per_trial", "must be > 0")
        _check(self.gpus_per_trial >= 0, "tune.gpus_per_trial", "must be >= 0")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: one section per stage.

    Args:
        seed: Seeds the split, cold start, augmentation, training and queries.
        data: :class:`DataConfig`.
        ssl: :class:`SSLConfig`.
        frozen: :class:`~hssal_ray.config.frozen.FrozenConfig` (read with ``ssl.finetune=frozen``).
        query: :class:`QueryConfig`.
        oracle: :class:`OracleConfig`.
        loop: :class:`LoopConfig`.
        resources: :class:`ResourcesConfig`.
        tune: :class:`TuneConfig`.
    """

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig, metadata=RUNTIME)

    def __post_init__(self) -> None:
        self._check_frozen()
        kinds = {
            k: isinstance(v, float)
            for k, v in (
                ("loop.initial_labeled", self.loop.initial_labeled),
                ("query.budget", self.query.budget),
                ("loop.total_budget", self.loop.total_budget),
            )
            if not (k == "loop.total_budget" and v == 0)
        }
        _check(
            len(set(kinds.values())) == 1,
            "query.budget",
            "loop.initial_labeled, query.budget and loop.total_budget must all be counts (integers) or "
            "all fractions of the training split (floats in (0, 1]); got "
            + ", ".join(f"{k}={'a fraction' if f else 'a count'}" for k, f in kinds.items()),
        )

    def _check_frozen(self) -> None:
        """The rules between ``frozen.*`` and ``ssl.*`` (each ``frozen`` key's own range is checked
        by :class:`FrozenConfig`). Other ``frozen`` keys are simply not read off the frozen path."""
        f, s, q = self.frozen, self.ssl, self.query
        _check(
            "committee" not in (q.uncertainty, q.late_uncertainty)
            or (s.finetune == "frozen" and f.pseudo_labels == "graph"),
            "query.uncertainty" if q.uncertainty == "committee" else "query.late_uncertainty",
            "committee ranks by the student, the teacher and the graph-smoothed pseudo-labels of the "
            "frozen path: it needs ssl.finetune=frozen and frozen.pseudo_labels=graph",
        )
        if s.finetune == "frozen":
            _check(
                f.embed_views >= 1,
                "frozen.embed_views",
                "ssl.finetune=frozen trains the head on stored augmented views: it needs >= 1, got 0",
            )
        _check(
            f.tta_views == 0 or s.finetune == "frozen",
            "frozen.tta_views",
            "averages the stored views of the frozen path: it needs ssl.finetune=frozen",
        )
        if f.pseudo_labels == "graph":
            _check(
                s.finetune == "frozen",
                "frozen.pseudo_labels",
                "graph pseudo-labels smooth the frozen head's predictions over cached features: "
                "they need ssl.finetune=frozen",
            )
            _check(
                s.threshold_mode == "fixed" and not s.dist_align,
                "frozen.pseudo_labels",
                "graph pseudo-labels use frozen.graph_cutoff: they do not combine with "
                "ssl.threshold_mode flexmatch/freematch or ssl.dist_align",
            )

    @property
    def run_path(self) -> str:
        """The run directory ``loop.run_dir/loop.name``."""
        return _io.join(self.loop.run_dir, self.loop.name)


# --------------------------------------------------------------------------- coercion
