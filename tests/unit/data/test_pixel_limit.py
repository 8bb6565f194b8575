"""One pixel limit for every decoder path, checked from the header before any pixel data is decoded.

``no_pixel_decoding`` replaces every pixel-reading entry point of tifffile and Pillow with one that
fails the test (``pytest.fail`` raises a ``BaseException``, so no ``except Exception`` in the
decoder can swallow it): a refused image must be refused from its header alone.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from hssal_ray.config import load_config
from hssal_ray.data import pipeline
from hssal_ray.data.catalog import scan
from hssal_ray.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from hssal_ray.data.pipeline import BAD_DIR, DecodeAugment, collect_bad_samples
from hssal_ray.errors import ConfigError
from tests.data.make_tiny import tiny_imagefolder

H, W = 30, 40  # 1200 pixels


def tiff_bomb(side: int = 20_000, tile: int = 2048) -> bytes:
    """A ``side x side`` zlib TIFF of zeros, ~400 KB for 20000 (one compressed tile written n*n times)."""
    zeros = zlib.compress(bytes(tile * tile), 9)
    n = -(-side // tile)
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        iter([zeros] * (n * n)),
        shape=(side, side),
        dtype=np.uint8,
        tile=(tile, tile),
        compression="zlib",
        photometric="minisblack",
    )
    return buf.getvalue()


def forbid_pixel_decoding(m: pytest.MonkeyPatch) -> None:
    def decoded(*args, **kwargs):
        pytest.fail("pixel data were decoded for an image the header already refuses")

    for cls in (tifffile.TiffFile, tifffile.TiffPage, tifffile.TiffFrame, tifffile.TiffPageSeries):
        m.setattr(cls, "asarray", decoded)
    m.setattr(ImageFile.ImageFile, "load_prepare", decoded)  # allocates the pixels of a file


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    forbid_pixel_decoding(monkeypatch)


def _pil(fmt: str, **kw) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def _tif(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


FORMATS = {
    "png": lambda: _pil("PNG"),
    "jpeg": lambda: _pil("JPEG"),
    "bmp": lambda: _pil("BMP"),
    "webp": lambda: _pil("WEBP", lossless=True),
    "gif": lambda: _pil("GIF"),
    "tiff_tifffile": lambda: _tif(np.zeros((H, W, 3), np.uint8), photometric="rgb"),
    "tiff_16bit_bands_first": lambda: _tif(
        np.zeros((3, H, W), np.uint16), photometric="minisblack", planarconfig="separate"
    ),
    # JPEG-in-TIFF: tifffile lacks the codec here, so this one goes through the Pillow fallback
    "tiff_pillow_fallback": lambda: _pil("TIFF", compression="jpeg"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_pixel_limit_applies_to_every_format_before_decoding(fmt, monkeypatch):
    data = FORMATS[fmt]()
    assert decode_image(data, bands=3, max_pixels=H * W).shape == (3, H, W)  # at the limit: decoded
    with monkeypatch.context() as m:
        forbid_pixel_decoding(m)
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data, bands=3, max_pixels=H * W - 1)
    assert e.value.reason == "too large"
    assert f"{W}x{H} = {H * W} pixels" in e.value.detail and "data.max_image_pixels" in e.value.detail


def test_default_limit_refuses_a_20000x20000_tiff_bomb_from_its_header(no_pixel_decoding):
    data = tiff_bomb()
    assert len(data) < 500_000  # a 400-megapixel image in a few hundred KB
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, bands=3)
    assert e.value.reason == "too large"
    assert "20000x20000 = 400000000 pixels" in e.value.detail and str(DEFAULT_MAX_PIXELS) in e.value.detail


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit gray) with a one-row image stream."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_bomb_above_pillows_own_limit_is_refused_with_the_same_reason(no_pixel_decoding):
    with pytest.raises(ImageDecodeError) as e:  # Pillow itself refuses 400 MP when opening it
        decode_image(png_header(20_000, 20_000), bands=3)
    assert e.value.reason == "too large" and "data.max_image_pixels" in e.value.detail


def test_tiff_band_count_and_sample_count_are_checked_before_decoding(no_pixel_decoding):
    stack = _tif(np.zeros((40, 16, 16), np.uint8), photometric="minisblack")  # 40 pages: not 3 bands
    with pytest.raises(ImageDecodeError) as e:
        decode_image(stack, bands=3)
    assert e.value.reason == "band count"
    # RGB with 60 extra samples: within the pixel limit, but 60x the samples of an RGB image
    many = _tif(
        np.zeros((16, 16, 63), np.uint8), photometric="rgb", planarconfig="contig", extrasamples=[0] * 60
    )
    with pytest.raises(ImageDecodeError) as e:
        decode_image(many, bands=3, max_pixels=16 * 16)
    assert e.value.reason == "too large" and "63 bands" in e.value.detail


def test_tiff_bomb_in_a_class_folder_is_listed_in_bad_samples_and_the_batch_goes_on(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    tiny_imagefolder(root, num_classes=2, per_class=3, size=16)
    bomb = "synthetic_farmland/bomb.tif"
    with open(os.path.join(root, bomb), "wb") as f:
        f.write(tiff_bomb())
    cat = scan(root)
    t = cat.table
    for cls in (tifffile.TiffFile, tifffile.TiffPage, tifffile.TiffFrame, tifffile.TiffPageSeries):
        monkeypatch.setattr(cls, "asarray", lambda *a, **k: pytest.fail("the bomb's pixels were decoded"))
    run = str(tmp_path / "run")
    fn = DecodeAugment(cat.root, cat.kind, bands=3, size=16, views=(), bad_dir=os.path.join(run, BAD_DIR))
    batch = {
        c: np.asarray(t[c].to_pylist(), dtype=object if c in ("sample_id", "source") else None)
        for c in ("sample_id", "source", "row", "label")
    }
    out = fn(batch)
    assert sorted(out["sample_id"]) == sorted(set(t["sample_id"].to_pylist()) - {bomb})
    assert out["image"].shape == (6, 3, 16, 16)
    assert collect_bad_samples(run) == 1
    with open(os.path.join(run, "bad_samples.csv"), newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["sample_id"] == bomb and row["reason"].startswith("too large: 20000x20000 = 400000000 pixels")


def test_max_image_pixels_is_a_validated_data_key_that_reaches_the_decoder(tmp_path, monkeypatch):
    assert load_config(None, []).data.max_image_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(ConfigError, match="data.max_image_pixels"):
        load_config(None, ["data.max_image_pixels=0"])
    cfg = load_config(None, ["data.max_image_pixels=1234", "data.follow_symlinks=true"])
    seen: dict = {}
    monkeypatch.setattr(pipeline, "stream", lambda table, **kw: seen.update(kw))
    pipeline.stream_for(cfg, None, root="r", kind="files", views=("none",), run_dir=str(tmp_path))
    assert seen["max_pixels"] == 1234 and seen["follow_symlinks"] is True
