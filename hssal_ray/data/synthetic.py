"""A seeded, clearly synthetic remote-sensing-like scene dataset, plus broken files for tests.

:func:`make_synthetic_rs` writes an ImageFolder tree whose class folders are all prefixed
``synthetic_`` (``synthetic_farmland``, ``synthetic_forest``, ... then ``synthetic_class_NN``). Each
class has a texture family (field parcels, tree blobs, street grid, smooth water, stripes, storage
tank rings, dune ripples, ...), a base frequency, an orientation and a spectral tint; every sample
jitters them (frequency x0.8-1.25, orientation +-0.25 rad, tint, illumination), mixes in a weaker
distractor texture of another family and adds noise. A small CNN learns it, but not in one step.
Output is deterministic for a given ``seed`` (and Pillow version, for JPEG).

:func:`make_corrupt_files` writes one file per bad-input case, with the outcome
:func:`hssal_ray.data.decode.decode_image` must give for it listed in :data:`CORRUPT_CASES`.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable
from typing import Literal

import numpy as np
import tifffile
from PIL import Image

from hssal_ray import _io

__all__ = ["make_synthetic_rs", "make_corrupt_files", "synthetic_class_names", "CORRUPT_CASES"]

log = logging.getLogger(__name__)

Fmt = Literal["png", "tif", "jpg"]
_NAMED: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("synthetic_farmland", "parcels", (0.55, 0.60, 0.30)),
    ("synthetic_forest", "blobs", (0.18, 0.42, 0.20)),
    ("synthetic_residential", "grid", (0.62, 0.55, 0.50)),
    ("synthetic_water", "smooth", (0.12, 0.28, 0.48)),
    ("synthetic_industrial", "stripes", (0.52, 0.52, 0.58)),
    ("synthetic_storage_tanks", "rings", (0.70, 0.70, 0.68)),
    ("synthetic_desert", "ripples", (0.80, 0.66, 0.45)),
    ("synthetic_meadow", "smooth", (0.40, 0.58, 0.25)),
    ("synthetic_parking_lot", "grid", (0.45, 0.45, 0.48)),
    ("synthetic_orchard", "blobs", (0.35, 0.50, 0.22)),
)
_FAMILIES = ("parcels", "blobs", "grid", "smooth", "stripes", "rings", "ripples")


def synthetic_class_names(num_classes: int) -> list[str]:
    """Class folder names used by :func:`make_synthetic_rs` (in generation order)."""
    named = [n for n, _, _ in _NAMED]
    return [named[k] if k < len(named) else f"synthetic_class_{k:02d}" for k in range(num_classes)]


def _texture(
    family: str, yy: np.ndarray, xx: np.ndarray, f: float, theta: float, rng: np.random.Generator
) -> np.ndarray:
    """One texture in [0, 1], shape of ``yy``; ``f`` in cycles per image, ``theta`` radians."""
    u = xx * math.cos(theta) + yy * math.sin(theta)
    w = -xx * math.sin(theta) + yy * math.cos(theta)
    phase = rng.uniform(0, 2 * math.pi)
    if family == "stripes":
        return 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * f * u + phase)) * 0.8
    if family == "ripples":
        return 0.5 + 0.5 * np.sin(2 * math.pi * f * u + 0.6 * np.sin(2 * math.pi * 1.5 * w) + phase)
    if family == "grid":
        a = np.abs(np.sin(math.pi * f * u + phase)) < 0.3
        b = np.abs(np.sin(math.pi * f * w + phase)) < 0.3
        return np.where(a | b, 0.9, 0.3)
    if family == "parcels":
        cells = rng.uniform(0.1, 1.0, size=(64, 64))
        iu = np.floor(u * f * 0.7 + 32).astype(int) % 64
        iw = np.floor(w * f * 1.4 + 32).astype(int) % 64
        return cells[iu, iw]
    if family == "rings":
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        r = np.hypot(yy - cy, xx - cx)
        return 0.5 + 0.5 * np.cos(2 * math.pi * f * 0.6 * r + phase)
    if family == "blobs":
        n = max(3, int(f * f * 0.6))
        out = np.zeros_like(yy)
        sigma = 0.45 / f
        for cy, cx in rng.uniform(0, 1, size=(n, 2)):
            out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        return np.clip(out, 0, 1)
    # smooth: a few low-frequency waves
    out = np.zeros_like(yy)
    for _ in range(3):
        t = rng.uniform(0, math.pi)
        out += np.sin(
            2 * math.pi * rng.uniform(0.5, 1.5) * (xx * math.cos(t) + yy * math.sin(t)) + rng.uniform(0, 6.3)
        )
    return 0.5 + out / 6.0


def _prototypes(num_classes: int, bands: int, seed: int) -> list[tuple[str, float, float, np.ndarray]]:
    protos = []
    for k in range(num_classes):
        rng = np.random.default_rng([seed, 1, k])
        family = _NAMED[k][1] if k < len(_NAMED) else _FAMILIES[k % len(_FAMILIES)]
        if bands == 3 and k < len(_NAMED):
            tint = np.asarray(_NAMED[k][2])
        else:
            tint = rng.uniform(0.15, 0.85, size=bands)
        protos.append((family, float(rng.uniform(3.0, 7.0)), float(rng.uniform(0, math.pi)), tint))
    return protos


def _render(proto: tuple[str, float, float, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(bands, size, size)`` uint8 sample of a class prototype."""
    family, f, theta, tint = proto
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    f_s = f * rng.uniform(0.8, 1.25)
    base = _texture(family, yy, xx, f_s, theta + rng.normal(0, 0.25), rng)
    other = _FAMILIES[rng.integers(len(_FAMILIES))]
    mix = rng.uniform(0.0, 0.35)
    base = (1 - mix) * base + mix * _texture(other, yy, xx, rng.uniform(2, 8), rng.uniform(0, math.pi), rng)
    tint_s = np.clip(tint + rng.normal(0, 0.06, size=tint.shape), 0.05, 1.0)
    gain = rng.uniform(0.75, 1.25)
    img = tint_s[:, None, None] * (0.45 + 0.9 * base[None]) * gain
    img += rng.normal(0, 0.06, size=img.shape)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _encode(chw: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    c = chw.shape[0]
    if c in (1, 3):
        im = Image.fromarray(chw[0] if c == 1 else chw.transpose(1, 2, 0))
        kwargs = {"quality": 90} if fmt == "jpg" else {}
        im.save(buf, {"png": "PNG", "jpg": "JPEG", "tif": "TIFF"}[fmt], **kwargs)
    else:
        tifffile.imwrite(buf, chw, photometric="minisblack", planarconfig="separate")
    return buf.getvalue()


def _writer(root: str) -> Callable[[str, bytes], None]:
    if "://" in str(root):
        return lambda rel, data: _io.atomic_write_bytes(_io.join(root, rel), data)

    def write(rel: str, data: bytes) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    return write


def make_synthetic_rs(
    root: str,
    *,
    num_classes: int = 4,
    per_class: int = 20,
    size: int = 32,
    seed: int = 0,
    bands: int = 3,
    fmt: Fmt = "png",
    unlabeled_flat: bool = False,
) -> str:
    """Write a synthetic RS-like ImageFolder (or flat unlabeled folder).

    Args:
        root: Output folder (local path or URI); created if needed.
        num_classes: Number of classes.
        per_class: Images per class.
        size: Image side in pixels.
        seed: Generator seed (same seed -> same files).
        bands: Bands per image; anything but 1 or 3 is written as an N-band TIFF (``fmt`` ignored).
        fmt: ``png``, ``tif`` or ``jpg``.
        unlabeled_flat: Write all images directly under ``root`` (``synthetic_00000.png``, ...)
            with no class folders, as an unlabeled pool.

    Returns:
        ``root``. Files are ``<class>/<class>_<i:04d>.<ext>`` (or ``synthetic_<n:05d>.<ext>``).
    """
    if num_classes < 1 or per_class < 1 or size < 4 or bands < 1:
        raise ValueError("num_classes and per_class must be >= 1, size >= 4, bands >= 1")
    if fmt not in ("png", "tif", "jpg"):
        raise ValueError(f"fmt must be png, tif or jpg, got {fmt!r}")
    if bands not in (1, 3) and fmt != "tif":
        log.info("bands=%d: writing TIFF instead of %s", bands, fmt)
        fmt = "tif"
    names = synthetic_class_names(num_classes)
    protos = _prototypes(num_classes, bands, seed)
    write = _writer(root)
    if "://" not in str(root):
        os.makedirs(root, exist_ok=True)
    n = 0
    for k, name in enumerate(names):
        for i in range(per_class):
            img = _render(protos[k], size, np.random.default_rng([seed, 2, k, i]))
            rel = f"synthetic_{n:05d}.{fmt}" if unlabeled_flat else f"{name}/{name}_{i:04d}.{fmt}"
            write(rel, _encode(img, fmt))
            n += 1
    log.info(
        "wrote %d synthetic images (%d classes, %d bands, %s) under %s", n, num_classes, bands, fmt, root
    )
    return str(root)


# name -> (file name, expected decode_image(bands=3) outcome: an ImageDecodeError reason, or None = decodes)
CORRUPT_CASES: dict[str, tuple[str, str | None]] = {
    "zero_byte": ("zero_byte.jpg", "empty"),
    "truncated_jpeg": ("truncated.jpg", "truncated"),
    "random_bytes": ("random_bytes.png", "not an image"),
    "text_as_jpg": ("notes.jpg", "not an image"),
    "grayscale": ("gray.png", None),
    "rgba": ("rgba.png", None),
    "palette": ("palette.png", None),
    "cmyk_jpeg": ("cmyk.jpg", None),
    "gray16_png": ("gray16.png", None),
    "rgb16_tif": ("rgb16.tif", None),
    "five_band_tif": ("five_band.tif", "band count"),
}


def make_corrupt_files(directory: str, *, size: int = 16, seed: int = 0) -> dict[str, str]:
    """Write one file per bad-input case of :data:`CORRUPT_CASES` into a local directory.

    Pixel content with known decoded values: ``gray16.png`` has left half 1000 and right half 3000
    (-> 0 and 255 after the percentile stretch); ``rgb16.tif`` has band 0 like ``gray16``, band 1
    constant 65535 (-> 255) and band 2 constant 0 (-> 0).

    Args:
        directory: Local folder (created if needed).
        size: Side of the valid images.
        seed: Seed for the random pixels / bytes.

    Returns:
        Case name -> file path.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    half = np.where(np.arange(size)[None, :] < size // 2, 1000, 3000).repeat(size, axis=0).astype(np.uint16)

    def pil(im: Image.Image, fmt: str, **kw: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    def tif(arr: np.ndarray, **kw: object) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        return buf.getvalue()

    # A 64x64 JPEG cut at 60%: the header is whole, the entropy-coded data is not.
    jpeg = pil(Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)), "JPEG", quality=90)
    content: dict[str, bytes] = {
        "zero_byte": b"",
        "truncated_jpeg": jpeg[: len(jpeg) * 6 // 10],
        "random_bytes": rng.bytes(512),
        "text_as_jpg": b"this is a text file, not a JPEG image\n" * 4,
        "grayscale": pil(Image.fromarray(rgb[..., 0]), "PNG"),
        "rgba": pil(Image.fromarray(np.dstack([rgb, np.full((size, size), 200, np.uint8)])), "PNG"),
        "palette": pil(Image.fromarray(rgb).convert("P"), "PNG"),
        "cmyk_jpeg": pil(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "gray16_png": pil(Image.fromarray(half), "PNG"),
        "rgb16_tif": tif(
            np.dstack([half, np.full_like(half, 65535), np.zeros_like(half)]), photometric="rgb"
        ),
        "five_band_tif": tif(
            rng.integers(0, 256, size=(5, size, size), dtype=np.uint8),
            photometric="minisblack",
            planarconfig="separate",
        ),
    }
    out = {}
    for name, (fname, _) in CORRUPT_CASES.items():
        path = os.path.join(directory, fname)
        with open(path, "wb") as f:
            f.write(content[name])
        out[name] = path
    return out
