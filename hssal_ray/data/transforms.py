"""Weak / strong augmentation of uint8 image batches, seeded per sample (FixMatch style).

``augment_batch`` is what a pipeline worker calls: every sample gets its own RNG built from its
``seed``, so the same seed gives the same output whatever batch the sample lands in, and the global
numpy / torch RNGs are never touched.

Views (``kind``):

* ``none``: center crop to ``crop_size`` (resize first if the image is smaller), then normalise.
  For scoring and evaluation.
* ``weak``: random horizontal flip, reflect-pad by 12.5% of ``crop_size`` and random crop of
  ``crop_size`` (FixMatch's weak view), then normalise.
* ``strong``: ``weak`` + RandAugment in FixMatch's *RandAugmentMC* spirit (2 ops drawn with
  replacement, each applied with probability 0.5 at a random magnitude ``v`` in 1..10) + Cutout
  (a square of side uniform in 16%-50% of ``crop_size``, filled with grey 127), then normalise.

RandAugment ops for 1- and 3-band images are torchvision v2 functional ops run on PIL images (the
fast PIL kernels): identity, autocontrast, brightness, color (3 bands only), contrast, equalize,
posterize, rotate, sharpness, shear x/y, solarize, translate x/y. Enhance factors are
``0.1 + 1.8 * v / 10``; rotate up to +-30 deg; shear up to +-0.3; translate up to +-30%; posterize
to ``4 + int(0.4 v)`` bits; solarize threshold ``256 - int(25.6 v)``; geometric ops use nearest
interpolation and grey fill 128. For N-band images (N not 1 or 3) the colour ops are undefined, so a
band-agnostic subset is used: identity, per-band autocontrast, brightness (scale all bands),
contrast (blend each band with its mean), equalize, posterize, solarize, rotate, shear x/y,
translate x/y and Gaussian noise (sigma up to 10% of the range); geometric ops use torchvision v2
functional ops on tensors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from hssal_ray.data.decode import resize_uint8

__all__ = ["augment_batch", "augment_image", "default_mean_std", "IMAGENET_MEAN", "IMAGENET_STD"]

Kind = Literal["none", "weak", "strong"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MASK64 = (1 << 64) - 1
_NEAREST = InterpolationMode.NEAREST
_FILL = 128
_CUTOUT_FILL = 127
_CUTOUT_RANGE = (0.16, 0.5)
_NUM_OPS = 2


def default_mean_std(bands: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants (in [0, 1] units): ImageNet for 3 bands, 0.5 / 0.25 per band otherwise."""
    if bands == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * bands, (0.25,) * bands


def _factor(v: int) -> float:
    return 0.1 + 1.8 * v / 10.0


def _signed(rng: random.Random, x: float) -> float:
    return x if rng.random() < 0.5 else -x


def _shear_deg(rng: random.Random, v: int) -> float:
    return math.degrees(math.atan(_signed(rng, 0.3 * v / 10.0)))


def _shift(rng: random.Random, v: int, side: int) -> int:
    return int(round(_signed(rng, 0.3 * v / 10.0) * side))


def _affine(
    img: Image.Image | torch.Tensor,
    *,
    angle: float = 0.0,
    tx: int = 0,
    ty: int = 0,
    shear: tuple[float, float] = (0.0, 0.0),
) -> Image.Image | torch.Tensor:
    return F.affine(
        img, angle=angle, translate=[tx, ty], scale=1.0, shear=list(shear), interpolation=_NEAREST, fill=_FILL
    )


Op = Callable[[object, int, random.Random], object]

# Ops on PIL images (1 or 3 bands); each takes (image, magnitude 1..10, rng).
_PIL_OPS: dict[str, Op] = {
    "identity": lambda im, v, r: im,
    "autocontrast": lambda im, v, r: F.autocontrast(im),
    "brightness": lambda im, v, r: F.adjust_brightness(im, _factor(v)),
    "color": lambda im, v, r: F.adjust_saturation(im, _factor(v)),
    "contrast": lambda im, v, r: F.adjust_contrast(im, _factor(v)),
    "equalize": lambda im, v, r: F.equalize(im),
    "posterize": lambda im, v, r: F.posterize(im, 4 + int(4 * v / 10)),
    "rotate": lambda im, v, r: _affine(im, angle=_signed(r, 30.0 * v / 10.0)),
    "sharpness": lambda im, v, r: F.adjust_sharpness(im, _factor(v)),
    "shear_x": lambda im, v, r: _affine(im, shear=(_shear_deg(r, v), 0.0)),
    "shear_y": lambda im, v, r: _affine(im, shear=(0.0, _shear_deg(r, v))),
    "solarize": lambda im, v, r: F.solarize(im, 256 - int(256 * v / 10)),
    "translate_x": lambda im, v, r: _affine(im, tx=_shift(r, v, im.size[0])),
    "translate_y": lambda im, v, r: _affine(im, ty=_shift(r, v, im.size[1])),
}
_GRAY_OPS = tuple(k for k in _PIL_OPS if k != "color")
_RGB_OPS = tuple(_PIL_OPS)


def _band_mean(t: torch.Tensor) -> torch.Tensor:
    return t.float().mean(dim=(-2, -1), keepdim=True)


def _nb_autocontrast(t: torch.Tensor) -> torch.Tensor:
    x = t.float()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    offset = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((x - offset) * scale).round_().clamp_(0, 255).to(torch.uint8)


def _nb_blend(t: torch.Tensor, ref: torch.Tensor | float, f: float) -> torch.Tensor:
    return (ref + f * (t.float() - ref)).round_().clamp_(0, 255).to(torch.uint8)


def _nb_noise(t: torch.Tensor, v: int, r: random.Random) -> torch.Tensor:
    g = torch.Generator().manual_seed(r.getrandbits(63))
    noise = torch.randn(t.shape, generator=g) * (0.1 * 255.0 * v / 10.0)
    return (t.float() + noise).round_().clamp_(0, 255).to(torch.uint8)


# Band-agnostic ops on (C, H, W) uint8 tensors, any C.
_NBAND_OPS: dict[str, Op] = {
    "identity": lambda t, v, r: t,
    "autocontrast": lambda t, v, r: _nb_autocontrast(t),
    "brightness": lambda t, v, r: _nb_blend(t, 0.0, _factor(v)),
    "contrast": lambda t, v, r: _nb_blend(t, _band_mean(t), _factor(v)),
    "equalize": lambda t, v, r: F.equalize(t),
    "posterize": lambda t, v, r: F.posterize(t, 4 + int(4 * v / 10)),
    "solarize": lambda t, v, r: F.solarize(t, 256 - int(256 * v / 10)),
    "rotate": lambda t, v, r: _affine(t, angle=_signed(r, 30.0 * v / 10.0)),
    "shear_x": lambda t, v, r: _affine(t, shear=(_shear_deg(r, v), 0.0)),
    "shear_y": lambda t, v, r: _affine(t, shear=(0.0, _shear_deg(r, v))),
    "translate_x": lambda t, v, r: _affine(t, tx=_shift(r, v, t.shape[-1])),
    "translate_y": lambda t, v, r: _affine(t, ty=_shift(r, v, t.shape[-2])),
    "noise": _nb_noise,
}
_NBAND_NAMES = tuple(_NBAND_OPS)


def _center(img: np.ndarray, crop: int) -> np.ndarray:
    if img.shape[1] < crop or img.shape[2] < crop:
        img = resize_uint8(img, crop)
    top = (img.shape[1] - crop) // 2
    left = (img.shape[2] - crop) // 2
    return img[:, top : top + crop, left : left + crop]


def _weak(img: np.ndarray, rng: random.Random, crop: int) -> np.ndarray:
    if rng.random() < 0.5:
        img = img[:, :, ::-1]
    pad = max(1, int(round(0.125 * crop)))
    if img.shape[1] + 2 * pad < crop or img.shape[2] + 2 * pad < crop:
        img = resize_uint8(img, crop)
    pad = min(pad, img.shape[1] - 1, img.shape[2] - 1)
    if pad > 0:
        img = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    top = rng.randint(0, img.shape[1] - crop)
    left = rng.randint(0, img.shape[2] - crop)
    return img[:, top : top + crop, left : left + crop]


def _randaugment(img: np.ndarray, rng: random.Random) -> np.ndarray:
    c = img.shape[0]
    names = _RGB_OPS if c == 3 else _GRAY_OPS if c == 1 else _NBAND_NAMES
    plan = []
    for _ in range(_NUM_OPS):
        name = names[rng.randrange(len(names))]
        v = rng.randint(1, 10)
        plan.append((name, v, rng.random() < 0.5))
    if not any(apply for _, _, apply in plan):
        return img
    if c in (1, 3):
        pil = Image.fromarray(np.ascontiguousarray(img[0] if c == 1 else img.transpose(1, 2, 0)))
        for name, v, apply in plan:
            if apply:
                pil = _PIL_OPS[name](pil, v, rng)
        arr = np.asarray(pil)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(img))
    for name, v, apply in plan:
        if apply:
            t = _NBAND_OPS[name](t, v, rng)
    return t.numpy()


def _cutout(img: np.ndarray, rng: random.Random) -> np.ndarray:
    h, w = img.shape[1:]
    side = int(round(rng.uniform(*_CUTOUT_RANGE) * min(h, w)))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    y0, y1 = max(0, int(cy - side / 2)), min(h, int(cy + side / 2))
    x0, x1 = max(0, int(cx - side / 2)), min(w, int(cx + side / 2))
    img = np.array(img, copy=True)
    img[:, y0:y1, x0:x1] = _CUTOUT_FILL
    return img


def augment_image(image: np.ndarray, seed: int, kind: Kind, crop_size: int) -> np.ndarray:
    """Augment one image (no normalisation).

    Args:
        image: ``(C, H, W)`` uint8.
        seed: Any integer (taken modulo 2**64); the same seed gives the same output.
        kind: ``none``, ``weak`` or ``strong``.
        crop_size: Output side.

    Returns:
        ``(C, crop_size, crop_size)`` uint8.
    """
    if kind == "none":
        return _center(image, crop_size)
    rng = random.Random(int(seed) & _MASK64)
    out = _weak(image, rng, crop_size)
    if kind == "strong":
        out = _cutout(_randaugment(out, rng), rng)
    return out


def augment_batch(
    images: np.ndarray,
    seeds: np.ndarray | Sequence[int],
    kind: Kind = "none",
    crop_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Augment and normalise a batch; every sample uses only its own seed.

    Args:
        images: ``(B, C, H, W)`` uint8.
        seeds: ``(B,)`` int64 per-sample seeds.
        kind: ``none`` (center crop), ``weak`` or ``strong`` (see the module docstring).
        crop_size: Output side; defaults to ``H``.
        mean: Per-band mean in [0, 1] units (``C`` values, or 1 to broadcast); default
            :func:`default_mean_std`.
        std: Per-band std in [0, 1] units.

    Returns:
        ``(B, C, crop_size, crop_size)`` float32, ``(x / 255 - mean) / std``.
    """
    if kind not in ("none", "weak", "strong"):
        raise ValueError(f"kind must be 'none', 'weak' or 'strong', got {kind!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be a (B, C, H, W) uint8 array, got {images.dtype} {images.shape}")
    b, c, h, _ = images.shape
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if seeds.shape[0] != b:
        raise ValueError(f"{b} images but {seeds.shape[0]} seeds")
    crop = int(crop_size or h)
    dm, ds = default_mean_std(c)
    m = np.asarray(dm if mean is None else mean, dtype=np.float32).reshape(-1)
    s = np.asarray(ds if std is None else std, dtype=np.float32).reshape(-1)
    if m.size not in (1, c) or s.size not in (1, c) or np.any(s <= 0):
        raise ValueError(f"mean/std need 1 or {c} values (std > 0), got {m.size}/{s.size}")
    out = np.empty((b, c, crop, crop), dtype=np.uint8)
    for i in range(b):
        out[i] = augment_image(images[i], int(seeds[i]), kind, crop)
    scale = (1.0 / (255.0 * s)).reshape(1, -1, 1, 1).astype(np.float32)
    shift = (m / s).reshape(1, -1, 1, 1).astype(np.float32)
    return out.astype(np.float32) * scale - shift
