"""Config sections of the data and the semi-supervised training: ``data.*`` and ``ssl.*``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from hssal_ray.config._base import _added, _check, _runtime


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
        max_image_pixels: Largest image (``height x width`` pixels) decoded, for every format;
            a larger one is refused from its header, before any pixel data is decoded, and listed
            in ``bad_samples.csv`` (``too large``). Default: Pillow's limit, 89,478,485 (about
            9459 x 9459).
        follow_symlinks: Use symbolic links under ``root`` that resolve to files or folders
            outside it. Default false: only files whose resolved path is inside the resolved
            root are used; links out of it are listed in ``bad_samples.csv``. Links that stay
            inside the root are followed either way.
        band_select: Bands of each image the model sees, 1-based as in GDAL/rasterio, in the
            model's channel order (``[3, 2, 1]``: red, green, blue of a Sentinel-2 B2,B3,B4,B8
            chip); ``data.bands`` must equal its length. ``None`` uses every band. Shards keep all
            bands; the selection happens when an image is decoded.
        value_range: ``[low, high]``: a fixed linear scaling of every selected band to the
            model's 8-bit input, ``round(clip((x - low) / (high - low), 0, 1) * 255)`` (e.g.
            ``[0, 3000]`` for Sentinel-2 L2A reflectance x 10000). Chips of one archive then keep
            their relative brightness (a per-image stretch makes water and desert equally
            bright). ``None`` = the per-image, per-band 2nd-98th percentile stretch of
            :mod:`hssal_ray.data.decode` (8-bit images pass unchanged either way).
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
    synthetic_classes: int = 6
    synthetic_per_class: int = 150
    synthetic_size: int = 32
    decode_batch_size: int = _runtime(64)
    embedding_cache: str | None = _runtime(None)
    max_image_pixels: int = 89_478_485
    follow_symlinks: bool = False
    band_select: list[int] | None = _added(None)
    value_range: list[float] | None = _added(None)

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
        if self.band_select is not None:
            _check(
                len(self.band_select) == self.bands and all(b >= 1 for b in self.band_select),
                "data.band_select",
                f"needs data.bands = {self.bands} band numbers, each >= 1 (1 = the first band), "
                f"got {self.band_select}",
            )
        if self.value_range is not None:
            _check(
                len(self.value_range) == 2 and self.value_range[0] < self.value_range[1],
                "data.value_range",
                f"needs [low, high] with low < high, got {self.value_range}",
            )
        _check(self.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2")
        _check(self.synthetic_per_class >= 2, "data.synthetic_per_class", "must be >= 2")
        _check(self.decode_batch_size >= 1, "data.decode_batch_size", "must be >= 1")
        _check(
            self.max_image_pixels >= 1,
            "data.max_image_pixels",
            f"must be >= 1 (pixels, height x width), got {self.max_image_pixels}",
        )


@dataclass(frozen=True)
class SSLConfig:
    """Semi-supervised training (FixMatch family; USB's key names).

    Args:
        enabled: False trains supervised only (``lambda_u`` is ignored).
        model: timm backbone name, or ``hssal_small_cnn`` (tiny, for CPU).
        weights: Pretrained weights: ``package:NAME`` (weights shipped by an installed package,
            e.g. ``package:efficientnet_lite0``; see :mod:`hssal_ray.packaged_weights`), or a local file
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
            fast path for CPUs and large archives; its settings are the ``frozen.*`` section,
            :class:`~hssal_ray.config.frozen.FrozenConfig`).
        trainable_stages: Stages of the backbone that ``partial`` trains (from the top).
        head: Classifier head: ``linear``, or ``mlp`` (one hidden layer, ``head_hidden`` wide).
        head_hidden: Hidden width of the ``mlp`` head.
        threshold_mode: ``fixed`` (FixMatch), ``flexmatch`` or ``freematch`` class-wise thresholds.
        dist_align: Distribution alignment of the weak-view probabilities.
        lr: Peak SGD learning rate.
        lr_schedule: Each round's schedule after the warm-up: ``cosine`` decays to 0 at the round's
            last step (the weights settle and the EMA converges to them: on short rounds the EMA
            and the online model then agree); ``fixmatch`` is FixMatch/USB's ``cos(7 pi k / 16 K)``,
            which ends at 0.2 of the peak rate (made for one run of ~1M steps).
        momentum: SGD momentum (Nesterov when ``nesterov``).
        nesterov: Use Nesterov momentum.
        weight_decay: Weight decay (not applied to biases and norms).
        batch_size: Labeled images per step per worker.
        steps_per_round: Optimiser steps in each round's training.
        warmup_steps: Linear warm-up steps.
        warm_start: Start each round from the previous round's weights (else re-initialise).
        eval_batch_size: Batch size for scoring and evaluation.
        amp: ``auto`` = bf16 autocast on CUDA, none on CPU.
        channels_last: channels_last memory format for the image models, in training, scoring, encoding
            and prediction (CPU and GPU). On a 2-core Intel Xeon (AVX-512) it made the frozen path's
            encode of EfficientNet-Lite0 at 224 px 1.7x faster (the backbone alone 1.8x), with the
            same features up to fp32 rounding (``benchmarks/encode_throughput.py``).
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
    threshold_mode: Literal["fixed", "flexmatch", "freematch"] = "fixed"
    dist_align: bool = False
    lr: float = 0.03
    lr_schedule: Literal["cosine", "fixmatch"] = "cosine"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 16
    steps_per_round: int = 60
    warmup_steps: int = 0
    warm_start: bool = True
    eval_batch_size: int = _runtime(128)
    amp: Literal["auto", "bf16", "none"] = "auto"
    channels_last: bool = _runtime(True)
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
        _check(
            self.weights is None or not self.pretrained_hub,
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
