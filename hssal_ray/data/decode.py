"""Decode encoded image bytes into ``(C, H, W)`` uint8 arrays, robustly.

Every failure is an :class:`ImageDecodeError` with a short ``reason`` (``empty``, ``not an image``,
``truncated``, ``corrupt``, ``too large``, ``band count``, ``layout``), so a pipeline can skip the
sample and list it in ``bad_samples.csv`` instead of crashing.

Conversion rules (documented contract):

* Pillow formats (JPEG, PNG, GIF, BMP, WebP, ...) are decoded with Pillow and ``.load()`` is always
  called, so truncated files are detected (unless someone set ``ImageFile.LOAD_TRUNCATED_IMAGES``).
* TIFF (magic ``II*``/``MM*``/BigTIFF) is decoded with tifffile, which handles N-band images in
  ``YXS`` (HWC, contiguous) and ``SYX``/page-stack (CHW) layouts, 16-bit and float data; if tifffile
  cannot read a file (e.g. a compression it lacks a codec for) Pillow is tried next.
* Palette and ``1`` images are expanded; alpha is dropped (RGBA/LA/PA -> RGB/L, TIFF extra samples
  dropped); CMYK/YCbCr/LAB/HSV -> RGB.
* Non-uint8 data (16-bit, int32, float) -> uint8 by a **per-image, per-band 2nd-98th percentile
  stretch**: ``round(clip((x - p2) / (p98 - p2), 0, 1) * 255)``. This is the usual RS display
  stretch and works for 8/12/14/16-bit sensors alike. A constant band (``p98 == p2``) is scaled by
  the maximum of its dtype instead (``x / dtype_max * 255``; float: ``clip(x, 0, 1) * 255``).
  Non-finite float values are set to the band's finite minimum first. (Pillow itself reduces
  16-bit-per-channel RGB PNGs to 8 bits when opening them; 16-bit grayscale ``I;16`` PNGs and all
  TIFF data go through this stretch.)
* Band mapping to the requested ``bands``: equal counts pass; 1 band -> 3 by replication; 3 -> 1 by
  ITU-R 601-2 luma (as Pillow's ``L``); anything else is an error with reason ``band count``.
* ``size``: resize to ``size x size`` (aspect ratio not kept; RS scene tiles are square) with
  antialiased bilinear interpolation (Pillow ``BILINEAR``, band by band) for any band count.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import tifffile
from PIL import Image, ImageFile, UnidentifiedImageError

from hssal_ray.errors import HSSALError

__all__ = ["ImageDecodeError", "decode_image", "decode_batch", "to_uint8", "resize_uint8"]

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ALPHA_MODES = {"RGBA": "RGBA", "RGBa": "RGBA", "RGBX": "RGBA", "LA": "LA", "La": "LA", "PA": "LA"}
_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_warned_truncated = False


class ImageDecodeError(HSSALError):
    """Encoded bytes could not be turned into an image of the requested bands.

    Attributes:
        reason: Short machine-friendly reason (``empty``, ``not an image``, ``truncated``, ``corrupt``,
            ``too large``, ``band count``, ``layout``).
        detail: Human-readable detail (may be empty).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert a ``(C, H, W)`` array of any numeric dtype to uint8 (see the module rules).

    Args:
        arr: ``(C, H, W)`` array; uint8 is returned unchanged, bool becomes 0/255.

    Returns:
        ``(C, H, W)`` uint8 array.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    out = np.empty(arr.shape, dtype=np.uint8)
    for c in range(arr.shape[0]):
        band = arr[c]
        if np.issubdtype(band.dtype, np.floating):
            band = band.astype(np.float64)
            finite = np.isfinite(band)
            if not finite.all():
                band = np.where(finite, band, band[finite].min() if finite.any() else 0.0)
        lo, hi = np.percentile(band, [2.0, 98.0])
        if hi > lo:
            scaled = (band.astype(np.float64) - lo) / (hi - lo)
        elif np.issubdtype(band.dtype, np.integer):
            scaled = band.astype(np.float64) / float(np.iinfo(band.dtype).max)
        else:
            scaled = band.astype(np.float64)
        out[c] = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def _decode_pil(data: bytes) -> tuple[np.ndarray, int]:
    """Pillow path. Returns ``(C, H, W)`` raw-dtype array and the number of dropped alpha bands."""
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images will not be detected")
        _warned_truncated = True
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not an image", "unrecognised image format") from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too large", str(e)) from e
    except Exception as e:  # Pillow raises many types for broken headers
        raise ImageDecodeError("corrupt", f"{type(e).__name__}: {e}") from e
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too large", str(e)) from e
    except OSError as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageDecodeError(reason, str(e)) from e
    except Exception as e:
        raise ImageDecodeError("corrupt", f"{type(e).__name__}: {e}") from e
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in _TO_RGB_MODES:
        im = im.convert("RGB")
    if im.mode in _ALPHA_MODES:
        im = im.convert(_ALPHA_MODES[im.mode])
        arr = np.asarray(im)[..., :-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1)), 1
    arr = np.asarray(im)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 2:
        return arr[None], 0
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), 0


def _axes_to_chw(arr: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Reorder a tifffile series to ``(C, H, W)``; returns the array and the band axis letter."""
    axes = axes.upper()
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes:
        raise ImageDecodeError("layout", f"unsupported TIFF axes {axes!r} for shape {arr.shape}")
    keep = [i for i, a in enumerate(axes) if a in "YX" or arr.shape[i] > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    others = [a for a in axes if a not in "YX"]
    if len(others) > 1:
        raise ImageDecodeError("layout", f"TIFF with axes {axes!r} and shape {arr.shape} is not one image")
    if not others:
        return (arr if axes == "YX" else arr.T)[None], ""
    band = others[0]
    return np.ascontiguousarray(arr.transpose([axes.index(band), axes.index("Y"), axes.index("X")])), band


def _decode_tiff(data: bytes) -> tuple[np.ndarray, int, bool]:
    """tifffile path. Returns ``(C, H, W)`` raw-dtype array, extra samples count, RGB flag."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.series:
            raise ImageDecodeError("corrupt", "TIFF holds no image series")
        series = tif.series[0]
        page = tif.pages[0]
        arr = series.asarray()
        photometric = getattr(page, "photometric", None)
        extra = len(getattr(page, "extrasamples", ()) or ())
        is_rgb = photometric is not None and int(photometric) == int(tifffile.PHOTOMETRIC.RGB)
        chw, band_axis = _axes_to_chw(np.asarray(arr), series.axes)
    # Extra samples (alpha) only make sense when the band axis is the samples axis.
    return chw, extra if band_axis == "S" else 0, is_rgb


def _map_bands(chw: np.ndarray, bands: int, extra: int) -> np.ndarray:
    c = chw.shape[0]
    if c == bands:
        return chw
    if extra and c - extra == bands:
        return chw[:bands]
    if c == 1 and bands == 3:
        return np.repeat(chw, 3, axis=0)
    if c == 3 and bands == 1:
        luma = np.tensordot(_LUMA, chw.astype(np.float32), axes=1)
        return np.rint(luma).clip(0, 255).astype(np.uint8)[None]
    raise ImageDecodeError("band count", f"image has {c} bands, expected {bands}")


def resize_uint8(chw: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(C, H, W)`` uint8 array to ``(C, size, size)``, antialiased bilinear, any ``C``.

    Uses Pillow's ``BILINEAR`` filter (its support widens when downscaling, i.e. antialiased) band by
    band (3 bands in one call): single-threaded and fast, unlike small-tensor torch ops under load.
    """
    if chw.shape[1] == size and chw.shape[2] == size:
        return chw
    if chw.shape[0] == 3:
        im = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
        return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1).copy()
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(b)).resize((size, size), Image.Resampling.BILINEAR)
            )
            for b in chw
        ]
    )


def decode_image(
    data: bytes | bytearray | memoryview, *, bands: int = 3, size: int | None = None
) -> np.ndarray:
    """Decode one encoded image into a ``(bands, H, W)`` uint8 array.

    Args:
        data: Encoded file bytes (JPEG, PNG, TIFF, ... as stored on disk or in a shard).
        bands: Bands wanted in the output (3 for RGB, N for N-band TIFF).
        size: If given, resize to ``(size, size)`` (antialiased bilinear).

    Returns:
        ``(bands, H, W)`` uint8 array (``H = W = size`` when ``size`` is given).

    Raises:
        ImageDecodeError: Empty, truncated, corrupt or non-image data, or a band count that cannot
            be mapped to ``bands`` (see the module docstring for the rules).
    """
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty", "zero bytes")
    data = bytes(data)
    try:
        extra, is_rgb = 0, False
        if data[:4] in _TIFF_MAGIC:
            try:
                chw, extra, is_rgb = _decode_tiff(data)
            except ImageDecodeError:
                raise
            except Exception as tiff_err:  # e.g. a codec tifffile lacks: let Pillow try
                try:
                    chw, extra = _decode_pil(data)
                except ImageDecodeError as pil_err:
                    msg = str(tiff_err)
                    short = any(s in msg.lower() for s in ("failed to read", "eof", "truncated"))
                    raise ImageDecodeError(
                        "truncated" if short or pil_err.reason == "truncated" else "corrupt",
                        f"tifffile: {type(tiff_err).__name__}: {msg}; pillow: {pil_err}",
                    ) from tiff_err
        else:
            chw, extra = _decode_pil(data)
        if chw.ndim != 3 or chw.shape[1] == 0 or chw.shape[2] == 0:
            raise ImageDecodeError("layout", f"decoded to an unusable shape {chw.shape}")
        if is_rgb and bands == 3 and chw.shape[0] > 3:
            extra = chw.shape[0] - 3
        out = _map_bands(to_uint8(chw), bands, extra)
        if size is not None:
            out = resize_uint8(out, size)
        return np.ascontiguousarray(out)
    except ImageDecodeError:
        raise
    except Exception as e:  # anything a decoder throws on hostile input is a bad sample
        raise ImageDecodeError("corrupt", f"{type(e).__name__}: {e}") from e


def decode_batch(
    data: Sequence[bytes | None],
    ids: Sequence[str],
    *,
    bands: int = 3,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode a batch, separating good images from bad samples.

    Args:
        data: ``B`` encoded images; ``None`` marks a source that could not be read.
        ids: ``B`` sample ids, used to report bad samples.
        bands: Output bands.
        size: Output side; when ``None`` all good images must share the first good image's shape
            (others are reported bad with reason ``shape``).

    Returns:
        ``(images, good_index, bad)``: ``images`` is ``(G, bands, S, S)`` uint8 for the ``G`` good
        samples, ``good_index`` ``(G,)`` int64 positions of those samples in the input, ``bad`` a
        list of ``(sample_id, reason)`` for the others.
    """
    if len(data) != len(ids):
        raise ValueError(f"{len(data)} images but {len(ids)} ids")
    good: list[np.ndarray] = []
    index: list[int] = []
    bad: list[tuple[str, str]] = []
    for i, (blob, sid) in enumerate(zip(data, ids, strict=True)):
        if blob is None:
            bad.append((str(sid), "unreadable: missing or unreadable source"))
            continue
        try:
            arr = decode_image(blob, bands=bands, size=size)
        except ImageDecodeError as e:
            bad.append((str(sid), str(e)[:300]))
            continue
        if good and arr.shape != good[0].shape:
            bad.append(
                (str(sid), f"shape: {arr.shape} differs from the batch's {good[0].shape} (pass size=)")
            )
            continue
        good.append(arr)
        index.append(i)
    if good:
        images = np.stack(good)
    else:
        side = size or 0
        images = np.zeros((0, bands, side, side), dtype=np.uint8)
    return images, np.asarray(index, dtype=np.int64), bad
