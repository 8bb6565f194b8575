"""Typed, validated configuration: one frozen dataclass per stage.

Defaults live only here. YAML files in ``configs/`` hold overrides, and ``key.sub=value``
arguments on the command line override those. An unknown key, a wrong type or an
out-of-range value raises one :class:`~hssal_ray.errors.ConfigError` naming the key and the
allowed values.

Example:
    >>> cfg = load_config(None, ["query.budget=10", "ssl.enabled=false"])
    >>> cfg.query.budget, cfg.ssl.enabled
    (10, False)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from hssal_ray import _io
from hssal_ray.errors import ConfigError

__all__ = [
    "DataConfig",
    "SSLConfig",
    "QueryConfig",
    "OracleConfig",
    "LoopConfig",
    "ResourcesConfig",
    "TuneConfig",
    "ExperimentConfig",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "config_from_dict",
    "science_fields",
    "RUNTIME",
]


RUNTIME: dict[str, Any] = {"runtime": True}
"""Field metadata of settings that change where or how fast a run goes, not its results.

Every other field is *science*: it is part of the run's identity (:func:`science_fields`), and a
run directory refuses a config whose science differs from the one it was started with.
"""


def _runtime(default: Any = None, **kwargs: Any) -> Any:
    return field(default=default, metadata=RUNTIME, **kwargs)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are decoded.

    Args:
        root: ImageFolder tree, flat folder of unlabeled images, or a directory/URI of Parquet
            shards. ``None`` generates the seeded synthetic demo dataset into the run directory.
        layout: How to read ``root``; ``auto`` detects it.
        bands: Number of image bands (``in_chans`` of the model). 3 for RGB.
        image_size: Side length images are resized to after decoding.
        test_fraction: Fraction of each class held out as the test split.
        val_fraction: Fraction of each class of the training split held out as a validation split
            (never labeled, never in the pool); 0 = none.
        eval_split: Split the loop evaluates on every round: ``test``, or ``val`` for tuning a
            recipe without reading the test split (metrics.jsonl then says ``eval_split: val``).
        mean: Per-band normalisation mean; ``None`` = ImageNet for 3 bands, 0.5 otherwise.
        std: Per-band normalisation std; ``None`` = ImageNet for 3 bands, 0.25 otherwise.
        synthetic_classes: Classes of the synthetic dataset (when ``root`` is None).
        synthetic_per_class: Images per class of the synthetic dataset.
        synthetic_size: Side length of the synthetic images.
        decode_batch_size: Rows per Ray Data decode batch.
        embedding_cache: Directory (or URI) holding frozen-encoder embedding stores shared by
            runs on the same images (``ssl.finetune=frozen``); ``None`` keeps the store in the run
            directory. Stores are keyed by everything that determines them, so a cache is never
            read with the wrong backbone, size or views.
    """

    root: str | None = None
    layout: Literal["auto", "imagefolder", "flat", "shards"] = "auto"
    bands: int = 3
    image_size: int = 32
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    eval_split: Literal["test", "val"] = "test"
    mean: list[float] | None = None
    std: list[float] | None = None
    synthetic_classes: int = 4
    synthetic_per_class: int = 60
    synthetic_size: int = 32
    decode_batch_size: int = _runtime(64)
    embedding_cache: str | None = _runtime(None)

    def __post_init__(self) -> None:
        _check(self.bands >= 1, "data.bands", f"must be >= 1, got {self.bands}")
        _check(
            8 <= self.image_size <= 4096, "data.image_size", f"must be in [8, 4096], got {self.image_size}"
        )
        _check(
            0.0 < self.test_fraction < 1.0,
            "data.test_fraction",
            f"must be in (0, 1), got {self.test_fraction}",
        )
        _check(
            0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}"
        )
        _check(
            self.eval_split == "test" or self.val_fraction > 0,
            "data.eval_split",
            "eval_split=val needs data.val_fraction > 0",
        )
        for name in ("mean", "std"):
            v = getattr(self, name)
            _check(
                v is None or len(v) == self.bands, f"data.{name}", f"needs {self.bands} values (one per band)"
            )
        _check(self.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2")
        _check(self.synthetic_per_class >= 2, "data.synthetic_per_class", "must be >= 2")
        _check(self.decode_batch_size >= 1, "data.decode_batch_size", "must be >= 1")


@dataclass(frozen=True)
class SSLConfig:
    """Semi-supervised training (FixMatch family; USB's key names).

    Args:
        enabled: False trains supervised only (``lambda_u`` is ignored).
        model: timm backbone name, or ``hssal_small_cnn`` (tiny, for CPU).
        weights: Pretrained weights: ``package:NAME`` (weights shipped by an installed package,
            e.g. ``package:efficientnet_lite0``; see :mod:`hssal_ray.weights`), or a local file
            (safetensors or a weights-only torch file).
        pretrained_hub: Load timm's hub weights (needs a network).
        model_kwargs: Extra timm kwargs, e.g. ``{img_size: 224}`` for ViTs.
        p_cutoff: Confidence threshold for pseudo-labels.
        uratio: Unlabeled images per labeled image in a step (FixMatch's reference is 7; the
            defaults here are the embedded demo's, sized for 2 CPU cores; configs/ set their own).
        lambda_u: Weight of the unlabeled loss.
        T: Softmax temperature of the pseudo-labels.
        ema_m: EMA momentum of the evaluation model (the decay it reaches after warm-up).
        ema_warmup: timm ``ModelEmaV3`` warm-up: decay ``min(ema_m, 1 - (1 + t) ** -power)`` at
            global step ``t`` (continues across warm-started rounds). Without it an EMA keeps
            ``ema_m ** steps`` of its starting weights, far too much on short rounds.
        ema_warmup_power: ``power`` of the warm-up.
        eval_model: The weights that evaluation, scoring and querying use: ``ema`` or ``online``.
            Both are evaluated every round (``test_accuracy_ema``, ``test_accuracy_online``).
        finetune: ``full`` trains every layer; ``partial`` only the last ``trainable_stages``
            stages (earlier ones frozen, BatchNorm in eval mode); ``frozen`` keeps the backbone
            fixed and trains only the head on cached embeddings (encode once per run: the
            fast path for CPUs and large archives).
        trainable_stages: Stages of the backbone that ``partial`` trains (from the top).
        head: Classifier head: ``linear``, or ``mlp`` (one hidden layer, ``head_hidden`` wide).
        head_hidden: Hidden width of the ``mlp`` head.
        embed_views: ``frozen``: seeded weak and strong augmented views cached per image (each).
        threshold_mode: ``fixed`` (FixMatch), ``flexmatch`` or ``freematch`` class-wise thresholds.
        dist_align: Distribution alignment of the weak-view probabilities.
        lr: Peak SGD learning rate.
        momentum: SGD momentum (Nesterov when ``nesterov``).
        nesterov: Use Nesterov momentum.
        weight_decay: Weight decay (not applied to biases and norms).
        batch_size: Labeled images per step per worker.
        steps_per_round: Optimiser steps in each round's training.
        warmup_steps: Linear warm-up steps.
        warm_start: Start each round from the previous round's weights (else re-initialise).
        eval_batch_size: Batch size for scoring and evaluation.
        amp: ``auto`` = bf16 autocast on CUDA, none on CPU.
        channels_last: Use channels_last memory format (GPU).
        checkpoint_every: Report a Ray Train checkpoint every N steps (0 = only at the end).
    """

    enabled: bool = True
    model: str = "hssal_small_cnn"
    weights: str | None = None
    pretrained_hub: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    p_cutoff: float = 0.95
    uratio: int = 3
    lambda_u: float = 1.0
    T: float = 1.0
    ema_m: float = 0.999
    ema_warmup: bool = True
    ema_warmup_power: float = 2 / 3
    eval_model: Literal["ema", "online"] = "ema"
    finetune: Literal["full", "partial", "frozen"] = "full"
    trainable_stages: int = 1
    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = 512
    embed_views: int = 2
    threshold_mode: Literal["fixed", "flexmatch", "freematch"] = "fixed"
    dist_align: bool = False
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 16
    steps_per_round: int = 60
    warmup_steps: int = 0
    warm_start: bool = True
    eval_batch_size: int = _runtime(128)
    amp: Literal["auto", "bf16", "none"] = "auto"
    channels_last: bool = _runtime(False)
    checkpoint_every: int = _runtime(0)

    def __post_init__(self) -> None:
        _check(0.0 <= self.p_cutoff <= 1.0, "ssl.p_cutoff", f"must be in [0, 1], got {self.p_cutoff}")
        _check(self.uratio >= 1, "ssl.uratio", f"must be >= 1, got {self.uratio}")
        _check(self.lambda_u >= 0.0, "ssl.lambda_u", f"must be >= 0, got {self.lambda_u}")
        _check(self.T > 0.0, "ssl.T", f"must be > 0, got {self.T}")
        _check(0.0 <= self.ema_m < 1.0, "ssl.ema_m", f"must be in [0, 1), got {self.ema_m}")
        _check(self.lr > 0.0, "ssl.lr", f"must be > 0, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, "ssl.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0.0, "ssl.weight_decay", "must be >= 0")
        _check(self.batch_size >= 1, "ssl.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.steps_per_round >= 1, "ssl.steps_per_round", f"must be >= 1, got {self.steps_per_round}")
        _check(self.warmup_steps >= 0, "ssl.warmup_steps", "must be >= 0")
        _check(self.eval_batch_size >= 1, "ssl.eval_batch_size", "must be >= 1")
        _check(self.checkpoint_every >= 0, "ssl.checkpoint_every", "must be >= 0")
        _check(self.ema_warmup_power > 0, "ssl.ema_warmup_power", "must be > 0")
        _check(self.trainable_stages >= 1, "ssl.trainable_stages", "must be >= 1")
        _check(self.head_hidden >= 1, "ssl.head_hidden", "must be >= 1")
        _check(0 <= self.embed_views <= 16, "ssl.embed_views", f"must be in [0, 16], got {self.embed_views}")
        _check(
            self.weights is None or not self.weights.startswith("package:") or not self.pretrained_hub,
            "ssl.weights",
            "give either packaged/local weights or ssl.pretrained_hub=true, not both",
        )
        if self.eval_model == "ema" and not self.ema_warmup:
            left = self.ema_m**self.steps_per_round
            if left > 0.05:
                warnings.warn(
                    f"ssl.ema_m={self.ema_m} without ssl.ema_warmup keeps {left:.0%} of each round's "
                    f"starting weights in the EMA after ssl.steps_per_round={self.steps_per_round} steps, "
                    "and the loop evaluates and queries with it: set ssl.ema_warmup=true, lower "
                    "ssl.ema_m, or ssl.eval_model=online",
                    UserWarning,
                    stacklevel=2,
                )


@dataclass(frozen=True)
class QueryConfig:
    """Active-learning query (HAL by default).

    Args:
        strategy: Query strategy name.
        budget: Samples queried per round.
        uncertainty: Uncertainty score HAL ranks by.
        coarse_k: Coarse clusters K1 (0 = automatic from pool size and budget).
        candidate_ratio: r: candidates kept per coarse cluster = ceil(r * b_k).
        fine_method: Fine clustering of the candidates.
        pick: Which sample of each fine cluster is queried.
        coarse_fit_sample: Fit the coarse k-means on at most this many rows.
        kmeans_backend: ``auto`` = cuML when importable and a GPU is visible, else CPU.
        kmeans_iters: Lloyd iterations.
        ssl_aware: Leave out samples both SSL views already pseudo-label confidently.
        alloc_temper: HAL's budget per coarse cluster follows ``mass**t * size**(1-t)``:
            1 = uncertainty mass, 0 = cluster size.
        parallel: Run HAL's per-coarse-cluster steps as parallel Ray tasks.
    """

    strategy: Literal["hal", "hal_flat", "random", "entropy", "margin", "typiclust", "coreset", "badge"] = (
        "hal"
    )
    budget: int = 20
    uncertainty: Literal["badge", "entropy", "margin", "least_confidence", "disagreement"] = "badge"
    coarse_k: int = 0
    candidate_ratio: float = 3.0
    fine_method: Literal["kmeans", "spectral"] = "kmeans"
    pick: Literal["uncertain", "typical"] = "uncertain"
    coarse_fit_sample: int = 100_000
    kmeans_backend: Literal["auto", "torch", "faiss", "sklearn", "cuml"] = "auto"
    kmeans_iters: int = 20
    ssl_aware: bool = False
    alloc_temper: float = 1.0
    parallel: bool = _runtime(False)

    def __post_init__(self) -> None:
        _check(self.budget >= 1, "query.budget", f"must be >= 1, got {self.budget}")
        _check(self.coarse_k >= 0, "query.coarse_k", f"must be >= 0 (0 = auto), got {self.coarse_k}")
        _check(
            self.candidate_ratio >= 1.0, "query.candidate_ratio", f"must be >= 1, got {self.candidate_ratio}"
        )
        _check(self.coarse_fit_sample >= 100, "query.coarse_fit_sample", "must be >= 100")
        _check(self.kmeans_iters >= 1, "query.kmeans_iters", "must be >= 1")
        _check(0.0 <= self.alloc_temper <= 1.0, "query.alloc_temper", "must be in [0, 1]")


@dataclass(frozen=True)
class OracleConfig:
    """Who answers the queries.

    Args:
        kind: ``simulated`` answers from the dataset's labels; ``human`` exports the batch as files
            and stops until ``--resume RUN --labels FILE``; ``label_studio`` pushes the batch to a
            Label Studio server (with the model's predictions) and pulls the annotations back on
            ``--resume RUN`` or while polling (``wait_s``).
        partial: With people answering, ``wait`` rejects answers that miss queried ids (skipped,
            cancelled or missing tasks); ``continue`` goes on with what came back.
        hide_sample_id: Show annotators an opaque ``ref`` instead of the sample id; ``auto`` hides
            it when it would reveal a folder name (ImageFolder data: the class).
        image_format: Encoding of the images embedded in the Label Studio tasks (``jpeg`` is ~3x
            smaller than ``png`` for photos).
        image_size: Longest side of the embedded images, in pixels.
        url: Base URL of the Label Studio server (``kind=label_studio``).
        project_id: An existing Label Studio project to use; ``None`` creates one per run on first
            use (recorded in ``RUN/label_studio.json``).
        token_env: Name of the environment variable that holds the Label Studio API token. The
            token itself is never part of the config.
        wait_s: Seconds the loop keeps polling Label Studio for a round's annotations before it
            exits ``awaiting_labels`` (0: look once).
        poll_s: Seconds between two polls.
    """

    kind: Literal["simulated", "human", "label_studio"] = "simulated"
    partial: Literal["wait", "continue"] = _runtime("wait")
    hide_sample_id: bool | Literal["auto"] = _runtime("auto")
    image_format: Literal["jpeg", "png"] = _runtime("jpeg")
    image_size: int = _runtime(256)
    url: str = _runtime("http://localhost:8080")
    project_id: int | None = _runtime(None)
    token_env: str = _runtime("LABEL_STUDIO_API_KEY")
    wait_s: float = _runtime(0.0)
    poll_s: float = _runtime(10.0)

    def __post_init__(self) -> None:
        _check(
            16 <= self.image_size <= 4096,
            "oracle.image_size",
            f"must be in [16, 4096], got {self.image_size}",
        )
        _check(
            self.url.startswith(("http://", "https://")) and len(self.url.split("://", 1)[1].strip("/")) > 0,
            "oracle.url",
            f"must be an http:// or https:// URL of the Label Studio server, got {self.url!r}",
        )
        _check(
            "@" not in self.url.split("://", 1)[-1].split("/", 1)[0],
            "oracle.url",
            f"must not hold credentials; put the API token in the environment variable {self.token_env}",
        )
        _check(
            self.project_id is None or self.project_id >= 1,
            "oracle.project_id",
            f"must be a Label Studio project id >= 1 (or null to create one), got {self.project_id}",
        )
        _check(
            bool(_ENV_NAME.match(self.token_env)),
            "oracle.token_env",
            f"must be the NAME of an environment variable (letters, digits, '_'), got {self.token_env!r}; "
            "the token itself never goes into the config",
        )
        _check(self.wait_s >= 0, "oracle.wait_s", f"must be >= 0 seconds (0 = look once), got {self.wait_s}")
        _check(self.poll_s >= 0.1, "oracle.poll_s", f"must be >= 0.1 seconds, got {self.poll_s}")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoopConfig:
    """The closed loop.

    Args:
        name: Run name; the run directory is ``run_dir/name``.
        run_dir: Parent directory (local path or URI) of run directories.
        rounds: Query rounds after the cold start.
        total_budget: Stop once this many labels are reached (0 = no limit besides ``rounds``).
        initial_labeled: Size of the round-0 cold-start set.
        cold_start: ``random`` (seeded), ``typiclust`` (clusters of the untrained encoder's
            features) or ``stratified`` (simulation only: uses the true labels).
        report: Write the HTML/PNG report at the end of every round.
        lease_timeout_s: Run-directory lease (one driver per run, issue 19): a driver whose lease
            heartbeat is older than this may be taken over by another. A runtime setting, not
            part of the run's science (``hssal_ray/loop/lease.py``).
    """

    name: str = _runtime("demo")
    run_dir: str = _runtime("runs")
    rounds: int = _runtime(3)
    total_budget: int = _runtime(0)
    initial_labeled: int = 20
    cold_start: Literal["random", "typiclust", "stratified"] = "random"
    report: bool = _runtime(True)
    lease_timeout_s: float = _runtime(60.0)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "loop.name", "must be a non-empty name without '/'")
        _check(self.rounds >= 0, "loop.rounds", f"must be >= 0, got {self.rounds}")
        _check(self.total_budget >= 0, "loop.total_budget", "must be >= 0 (0 = no limit)")
        _check(self.initial_labeled >= 1, "loop.initial_labeled", f"must be >= 1, got {self.initial_labeled}")
        _check(self.lease_timeout_s > 0, "loop.lease_timeout_s", f"must be > 0, got {self.lease_timeout_s}")


@dataclass(frozen=True)
class ResourcesConfig:
    """Where things run (kept apart from the science settings).

    Args:
        address: Ray address (``auto``, ``ray://...``); ``None`` starts a local runtime.
        num_cpus: CPUs of a local runtime (``None`` = all).
        num_workers: Ray Train workers (DDP ranks).
        use_gpu: One GPU per training worker and per scoring actor.
        cpus_per_worker: CPUs reserved per training worker.
        score_actors: Scoring actors (one per GPU when ``use_gpu``).
        max_failures: Ray Train restarts from the last checkpoint after a worker failure.
        object_store_memory: Bytes for a local runtime's object store (``None`` = Ray's default).
        executor: Where the model runs. ``ray``: training as a Ray Train ``TorchTrainer`` and
            scoring/evaluation in a Ray Data actor pool. ``driver``: the same worker loop and
            the same scorer in the driver process, fed by the same Ray Data decode streams (no
            worker-group or actor start-up: ~15-30 s a round less on CPU; no automatic worker
            restarts: a failed stage is rerun by the loop). ``auto`` = ``driver`` for one CPU
            training worker and one scoring actor on a local runtime, else ``ray``.
    """

    address: str | None = _runtime(None)
    num_cpus: int | None = _runtime(None)
    num_workers: int = 1  # science: the global batch is num_workers * ssl.batch_size
    use_gpu: bool = _runtime(False)
    cpus_per_worker: float = _runtime(1.0)
    score_actors: int = _runtime(1)
    max_failures: int = _runtime(2)
    object_store_memory: int | None = _runtime(None)
    executor: Literal["auto", "ray", "driver"] = _runtime("auto")

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "resources.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, "resources.cpus_per_worker", "must be > 0")
        _check(self.score_actors >= 1, "resources.score_actors", "must be >= 1")
        _check(self.max_failures >= 0, "resources.max_failures", "must be >= 0")
        _check(self.num_cpus is None or self.num_cpus >= 1, "resources.num_cpus", "must be >= 1")

    def in_driver(self) -> bool:
        """Whether training, scoring and evaluation run in the driver process (see ``executor``)."""
        import os

        if self.executor != "auto":
            return self.executor == "driver"
        one = self.num_workers == 1 and self.score_actors == 1 and not self.use_gpu
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
        query: :class:`QueryConfig`.
        oracle: :class:`OracleConfig`.
        loop: :class:`LoopConfig`.
        resources: :class:`ResourcesConfig`.
        tune: :class:`TuneConfig`.
    """

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tune: TuneConfig = field(default_factory=TuneConfig, metadata=RUNTIME)

    @property
    def run_path(self) -> str:
        """The run directory ``loop.run_dir/loop.name``."""
        return _io.join(self.loop.run_dir, self.loop.name)


# --------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: got {value!r}; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: got {value!r}; expected a string")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected a list")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}; allowed keys here: {', '.join(names)}")
        kwargs[k] = _coerce(key, v, hints[k])
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the name check above
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    return _build(ExperimentConfig, values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form of a config (for YAML, JSON and Ray workers)."""
    return dataclasses.asdict(cfg)


def science_fields(cfg: Any) -> dict[str, Any]:
    """The nested dict of every field of ``cfg`` not marked :data:`RUNTIME`: the run's identity."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("runtime"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = science_fields(v) if dataclasses.is_dataclass(v) else v
    return out


def config_to_yaml(cfg: Any) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = {}
            cur[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(values: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a nested mapping."""
    out = _deepcopy(values)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
        _set_dotted(out, key, value)
    return out


def _deepcopy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(path: str | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML file of overrides (or none), apply ``key=value`` overrides and validate.

    Args:
        path: YAML file (local path or URI); ``None`` for pure defaults (the embedded demo).
        overrides: ``key.sub=value`` strings.

    Returns:
        The validated, frozen :class:`ExperimentConfig`.

    Raises:
        ConfigError: On a missing file, bad YAML, an unknown key, a wrong type or a bad value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        if not _io.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(_io.read_text(path))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        values = loaded
    return config_from_dict(apply_overrides(values, overrides))
