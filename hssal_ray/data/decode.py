"""Decode encoded image bytes into ``(C, H, W)`` uint8 arrays, robustly.

Every failure is an :class:`ImageDecodeError` with a short ``reason`` (``empty``, ``not an image``,
``truncated``, ``corrupt``, ``too large``, ``band count``, ``layout``), so a pipeline can skip the
sample and list it in ``bad_samples.csv`` instead of crashing.

Size limit (decompression bombs): every decoder path reads the image's header first and refuses,
with reason ``too large`` and before any pixel data is decoded, an image of more than
``max_pixels`` pixels (``H x W``; default :data:`DEFAULT_MAX_PIXELS`, Pillow's own default, set
by ``data.max_image_pixels``). A TIFF is also refused before decoding when its band count cannot
be mapped (``band count``), when it is not one image (``layout``), or when it holds more than
``max_pixels * max(bands + 1, 4)`` samples (``too large``: e.g. a header claiming thousands of
extra samples). So a 400 KB file that claims 20000 x 20000 pixels costs milliseconds, not gigabytes.

Conversion rules (documented contract):

* Pillow formats (JPEG, PNG, GIF, BMP, WebP, ...) are decoded with Pillow and ``.load()`` is always
  called, so truncated files are detected (unless someone set ``ImageFile.LOAD_TRUNCATED_IMAGES``).
  Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``) is raised in the decoding process when
  ``max_pixels`` is above it, so the one limit here is the one that applies.
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
* Band selection and fixed scaling (``data.band_select``, ``data.value_range``; N-band 16-bit
  chips, e.g. from ``python -m hssal_ray.data.tile``): ``select`` keeps the listed bands (1-based,
  in that order) before anything else, so the header checks count the selected bands; with
  ``value_range = (low, high)`` non-uint8 data become ``round(clip((x - low) / (high - low), 0, 1)
  * 255)`` for every band instead of the percentile stretch (comparable brightness across the
  chips of an archive). A band number above the image's band count is ``band count``.
* Band mapping to the requested ``bands``: equal counts pass; 1 band -> 3 by replication; 3 -> 1 by
  ITU-R 601-2 luma (as Pillow's ``L``); anything else is an error with reason ``band count``.
* ``size``: resize to ``size x size`` (aspect ratio not kept; RS scene tiles are square) with
  antialiased bilinear interpolation (Pillow ``BILINEAR``, band by band) for any band count.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import tifffile
from PIL import Image, ImageFile, UnidentifiedImageError

from hssal_ray.errors import HSSALError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "decode_batch",
    "to_uint8",
    "resize_uint8",
]

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ALPHA_MODES = {"RGBA": "RGBA", "RGBa": "RGBA", "RGBX": "RGBA", "LA": "LA", "La": "LA", "PA": "LA"}
_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_warned_truncated = False

DEFAULT_MAX_PIXELS = 89_478_485
"""Default pixel limit: Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 89.5 megapixels, 0.27 GB as
8-bit RGB); far above any scene tile of the RS benchmarks (UCM 256 x 256, AID 600 x 600)."""


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


def to_uint8(arr: np.ndarray, value_range: Sequence[float] | None = None) -> np.ndarray:
    """Convert a ``(C, H, W)`` array of any numeric dtype to uint8 (see the module rules).

    Args:
        arr: ``(C, H, W)`` array; uint8 is returned unchanged, bool becomes 0/255.
        value_range: ``(low, high)`` for a fixed linear scaling of every band; ``None`` = the
            per-band 2nd-98th percentile stretch.

    Returns:
        ``(C, H, W)`` uint8 array.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        x = arr.astype(np.float64)
        x[~np.isfinite(x)] = lo
        return np.rint(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
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


def _check_pixels(h: int, w: int, max_pixels: int, bands: int = 1, max_samples: int | None = None) -> None:
    """Refuse (``too large``) an image whose header claims more than the limit; nothing is decoded yet."""
    if h * w > max_pixels:
        raise ImageDecodeError(
            "too large",
            f"{w}x{h} = {h * w} pixels, over the limit of {max_pixels} (data.max_image_pixels); not decoded",
        )
    if max_samples is not None and h * w * bands > max_samples:
        raise ImageDecodeError(
            "too large",
            f"{w}x{h} pixels x {bands} bands = {h * w * bands} samples, over the limit of {max_samples} "
            f"(data.max_image_pixels x max(bands + 1, 4)); not decoded",
        )


def _open_pil(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with this module's limit in charge of decompression bombs."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > 2 * limit:  # Pillow would refuse what the limit allows
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():  # Pillow warns above its limit: _check_pixels decides instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _decode_pil(data: bytes, max_pixels: int) -> tuple[np.ndarray, int]:
    """Pillow path. Returns ``(C, H, W)`` raw-dtype array and the number of dropped alpha bands."""
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images will not be detected")
        _warned_truncated = True
    try:
        im = _open_pil(data, max_pixels)
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not an image", "unrecognised image format") from e
    except Image.DecompressionBombError as e:  # above twice Pillow's limit, which is >= max_pixels / 2
        raise ImageDecodeError(
            "too large", f"over the limit of {max_pixels} pixels (data.max_image_pixels); not decoded ({e})"
        ) from e
    except Exception as e:  # Pillow raises many types for broken headers
        raise ImageDecodeError("corrupt", f"{type(e).__name__}: {e}") from e
    _check_pixels(im.height, im.width, max_pixels)  # from the header, before .load() decodes
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


def _chw_layout(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str, str]:
    """Where a tifffile series' axes go in ``(C, H, W)``, from its shape alone (nothing decoded).

    Returns the shape and axes without their length-1 non-image axes, and the band axis letter
    (``""`` for a single-band image).
    """
    axes = axes.upper()
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise ImageDecodeError("layout", f"unsupported TIFF axes {axes!r} for shape {shape}")
    keep = [i for i, a in enumerate(axes) if a in "YX" or shape[i] > 1]
    kept = tuple(shape[i] for i in keep)
    axes = "".join(axes[i] for i in keep)
    others = [a for a in axes if a not in "YX"]
    if len(others) > 1:
        raise ImageDecodeError("layout", f"TIFF with axes {axes!r} and shape {kept} is not one image")
    return kept, axes, others[0] if others else ""


def _axes_to_chw(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a decoded tifffile series to ``(C, H, W)``."""
    kept, axes, band = _chw_layout(arr.shape, axes)
    arr = arr.reshape(kept)
    if not band:
        return (arr if axes == "YX" else arr.T)[None]
    return np.ascontiguousarray(arr.transpose([axes.index(band), axes.index("Y"), axes.index("X")]))


def _select_bands(chw: np.ndarray, select: Sequence[int] | None) -> np.ndarray:
    """The ``select`` bands (1-based) of a ``(C, H, W)`` array, in that order."""
    if select is None:
        return chw
    _check_select(chw.shape[0], select)
    return chw[[b - 1 for b in select]]


def _check_select(c: int, select: Sequence[int]) -> None:
    if max(select) > c:
        raise ImageDecodeError(
            "band count", f"image has {c} bands, data.band_select asks for band {max(select)}"
        )


def _decode_tiff(
    data: bytes, bands: int, max_pixels: int, select: Sequence[int] | None = None
) -> tuple[np.ndarray, int]:
    """tifffile path. Returns the ``(C, H, W)`` raw-dtype array and the count of bands to drop.

    The shape, band count and layout are checked from the header (IFD tags) before the pixel
    data are decoded, so a decompression bomb is refused in milliseconds.
    """
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.series:
            raise ImageDecodeError("corrupt", "TIFF holds no image series")
        series = tif.series[0]
        page = tif.pages[0]
        kept, axes, band_axis = _chw_layout(tuple(int(n) for n in series.shape), series.axes)
        c = kept[axes.index(band_axis)] if band_axis else 1
        h, w = kept[axes.index("Y")], kept[axes.index("X")]
        if h == 0 or w == 0:
            raise ImageDecodeError("layout", f"decoded to an unusable shape {(c, h, w)}")
        photometric = getattr(page, "photometric", None)
        # Extra samples (alpha) only make sense when the band axis is the samples axis.
        extra = len(getattr(page, "extrasamples", ()) or ()) if band_axis == "S" else 0
        if photometric is not None and int(photometric) == int(tifffile.PHOTOMETRIC.RGB):
            if bands == 3 and c > 3:
                extra = c - 3
        _check_pixels(h, w, max_pixels, c, max_pixels * max(bands + 1, 4))
        if select is not None:
            _check_select(c, select)
            c, extra = len(select), 0
        _check_bands(c, bands, extra)
        chw = _select_bands(_axes_to_chw(np.asarray(series.asarray()), series.axes), select)
    return chw, extra


def _check_bands(c: int, bands: int, extra: int) -> None:
    """Refuse (``band count``) ``c`` bands that :func:`_map_bands` cannot turn into ``bands``."""
    if c == bands or (extra and c - extra == bands) or (c == 1 and bands == 3) or (c == 3 and bands == 1):
        return
    raise ImageDecodeError("band count", f"image has {c} bands, expected {bands}")


def _map_bands(chw: np.ndarray, bands: int, extra: int) -> np.ndarray:
    c = chw.shape[0]
    _check_bands(c, bands, extra)
    if c == bands:
        return chw
    if extra and c - extra == bands:
        return chw[:bands]
    if c == 1 and bands == 3:
        return np.repeat(chw, 3, axis=0)
    luma = np.tensordot(_LUMA, chw.astype(np.float32), axes=1)  # c == 3, bands == 1
    return np.rint(luma).clip(0, 255).astype(np.uint8)[None]


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
    data: bytes | bytearray | memoryview,
    *,
    bands: int = 3,
    size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    select: Sequence[int] | None = None,
    value_range: Sequence[float] | None = None,
) -> np.ndarray:
    """Decode one encoded image into a ``(bands, H, W)`` uint8 array.

    Args:
        data: Encoded file bytes (JPEG, PNG, TIFF, ... as stored on disk or in a shard).
        bands: Bands wanted in the output (3 for RGB, N for N-band TIFF).
        size: If given, resize to ``(size, size)`` (antialiased bilinear).
        max_pixels: Largest ``H x W`` decoded; a larger image is refused from its header
            (reason ``too large``) before its pixel data are decoded.
        select: 1-based bands to keep, in this order (``data.band_select``); ``None`` = all.
        value_range: ``(low, high)`` fixed scaling of non-uint8 data (``data.value_range``);
            ``None`` = per-image percentile stretch.

    Returns:
        ``(bands, H, W)`` uint8 array (``H = W = size`` when ``size`` is given).

    Raises:
        ImageDecodeError: Empty, truncated, corrupt, too large or non-image data, or a band count
            that cannot be mapped to ``bands`` (see the module docstring for the rules).
    """
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty", "zero bytes")
    data = bytes(data)
    try:
        if data[:4] in _TIFF_MAGIC:
            try:
                chw, extra = _decode_tiff(data, bands, max_pixels, select)
            except ImageDecodeError:
                raise
            except Exception as tiff_err:  # e.g. a codec tifffile lacks: let Pillow try
                try:
                    chw, extra = _decode_pil(data, max_pixels)
                    chw, extra = (_select_bands(chw, select), 0) if select is not None else (chw, extra)
                except ImageDecodeError as pil_err:
                    msg = str(tiff_err)
                    short = any(s in msg.lower() for s in ("failed to read", "eof", "truncated"))
                    raise ImageDecodeError(
                        "truncated" if short or pil_err.reason == "truncated" else "corrupt",
                        f"tifffile: {type(tiff_err).__name__}: {msg}; pillow: {pil_err}",
                    ) from tiff_err
        else:
            chw, extra = _decode_pil(data, max_pixels)
            if select is not None:
                chw, extra = _select_bands(chw, select), 0
        if chw.ndim != 3 or chw.shape[1] == 0 or chw.shape[2] == 0:
            raise ImageDecodeError("layout", f"decoded to an unusable shape {chw.shape}")
        out = _map_bands(to_uint8(chw, value_range), bands, extra)
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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    unreadable: Mapping[int, str] | None = None,
    select: Sequence[int] | None = None,
    value_range: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode a batch, separating good images from bad samples.

    Args:
        data: ``B`` encoded images; ``None`` marks a source that could not be read.
        ids: ``B`` sample ids, used to report bad samples.
        bands: Output bands.
        size: Output side; when ``None`` all good images must share the first good image's shape
            (others are reported bad with reason ``shape``).
        max_pixels: Pixel limit of :func:`decode_image`.
        unreadable: Why a ``None`` entry could not be read, by position (as filled in by
            :func:`hssal_ray.data.fetch.load_bytes`); listed as ``unreadable: <why>``.
        select: Bands to keep (1-based), as in :func:`decode_image`.
        value_range: Fixed scaling, as in :func:`decode_image`.

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
            why = (unreadable or {}).get(i, "missing or unreadable source")
            bad.append((str(sid), f"unreadable: {why}"[:300]))
            continue
        try:
            arr = decode_image(
                blob, bands=bands, size=size, max_pixels=max_pixels, select=select, value_range=value_range
            )
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
