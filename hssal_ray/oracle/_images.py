"""Turn decoded images of any common layout into small PNG/JPEG data URIs (contact sheets, Label Studio)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["to_rgb_uint8", "png_data_uri", "image_data_uri", "IMAGE_FORMATS"]

IMAGE_FORMATS = ("jpeg", "png")
"""Encodings of the embedded images: JPEG (small; the default) or PNG (lossless)."""


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image to ``(H, W, 3)`` uint8 for display.

    Accepts ``(H, W)``, ``(H, W, C)`` or channels-first ``(C, H, W)`` with C in 1..4 or more bands
    (the first three are shown), of uint8, other integer, bool or float type. Non-uint8 data is
    scaled: floats in [0, 1] by 255, anything else by a 1st-99th percentile stretch.

    Args:
        image: The decoded image.

    Returns:
        image: ``(H, W, 3)`` uint8.

    Raises:
        ValueError: The array is not 2-D or 3-D, or is empty.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"expected an (H, W[, C]) image, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[0] <= 4 < min(arr.shape[1], arr.shape[2]) and arr.shape[2] > 4:
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1 or arr.shape[2] == 2:
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    data = arr.astype(np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and finite.min() >= 0.0 and finite.max() <= 1.0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
        if hi <= lo:
            lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    scaled = (np.nan_to_num(data, nan=lo) - lo) / (hi - lo) * 255.0
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def png_data_uri(image: np.ndarray, max_side: int) -> str:
    """Encode an image as a ``data:image/png;base64,...`` URI, shrunk to at most ``max_side`` pixels.

    Args:
        image: Any layout :func:`to_rgb_uint8` accepts.
        max_side: Longest side of the encoded image, in pixels (aspect ratio kept; never enlarged).

    Returns:
        The data URI.
    """
    pil = Image.fromarray(to_rgb_uint8(image))
    pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(image: np.ndarray, max_side: int, fmt: str = "jpeg", quality: int = 90) -> str:
    """Encode an image as a ``data:image/jpeg`` (or ``png``) URI, shrunk to at most ``max_side`` pixels.

    JPEG at quality 90 is about the size of a source JPEG (a PNG of a photo is ~3-4x larger), so
    archive-scale batches stay small.

    Args:
        image: Any layout :func:`to_rgb_uint8` accepts.
        max_side: Longest side of the encoded image, in pixels (aspect ratio kept; never enlarged).
        fmt: ``jpeg`` or ``png``.
        quality: JPEG quality (1-95).

    Returns:
        The data URI.

    Raises:
        ValueError: ``fmt`` is not ``jpeg`` or ``png``.
    """
    if fmt == "png":
        return png_data_uri(image, max_side)
    if fmt != "jpeg":
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    pil = Image.fromarray(to_rgb_uint8(image))
    pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
