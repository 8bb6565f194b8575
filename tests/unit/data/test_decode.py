"""decode_image / decode_batch: formats, band mapping, 16-bit and float rules, resizing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from hssal_ray.data.decode import ImageDecodeError, decode_batch, decode_image, to_uint8
from hssal_ray.errors import HSSALError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)  # non-square on purpose
CHW = RGB.transpose(2, 0, 1)


def pil_bytes(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def tif_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
def test_lossless_rgb_roundtrip(fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(pil_bytes(RGB, fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (3, 24, 20)
    np.testing.assert_array_equal(out, CHW)


def test_jpeg_and_tifffile_rgb():
    out = decode_image(pil_bytes(RGB, "JPEG", quality=100, subsampling=0))
    assert out.shape == (3, 24, 20) and np.abs(out.astype(int) - CHW).mean() < 4
    np.testing.assert_array_equal(decode_image(tif_bytes(RGB, photometric="rgb")), CHW)
    np.testing.assert_array_equal(decode_image(pil_bytes(RGB, "TIFF", compression="tiff_lzw")), CHW)


def test_nband_tiff_layouts():
    x = RNG.integers(0, 256, size=(5, 16, 16), dtype=np.uint8)
    layouts = {
        "chw_separate": tif_bytes(x, photometric="minisblack", planarconfig="separate"),
        "hwc_contig": tif_bytes(x.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig"),
        "page_stack": tif_bytes(x),
    }
    for name, data in layouts.items():
        np.testing.assert_array_equal(decode_image(data, bands=5), x, err_msg=name)
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data, bands=3)
        assert e.value.reason == "band count" and "5 bands, expected 3" in str(e.value)


def test_rgb_tiff_with_alpha_extra_sample_drops_it():
    rgba = RNG.integers(0, 256, size=(8, 8, 4), dtype=np.uint8)
    data = tif_bytes(rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(decode_image(data), rgba[..., :3].transpose(2, 0, 1))


def test_band_mapping():
    gray = RGB[..., 0]
    out = decode_image(pil_bytes(gray, "PNG"))
    assert out.shape == (3, 24, 20) and all(np.array_equal(out[c], gray) for c in range(3))
    np.testing.assert_array_equal(decode_image(pil_bytes(gray, "PNG"), bands=1)[0], gray)
    luma = decode_image(pil_bytes(RGB, "PNG"), bands=1)
    expected = np.rint(RGB.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    assert luma.shape == (1, 24, 20) and np.abs(luma[0].astype(int) - expected).max() <= 1
    with pytest.raises(ImageDecodeError, match="band count"):
        decode_image(pil_bytes(gray, "PNG"), bands=4)


def test_alpha_palette_cmyk():
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 77, np.uint8)])
    np.testing.assert_array_equal(decode_image(pil_bytes(rgba, "PNG")), CHW)
    la = Image.fromarray(RGB[..., 0]).convert("LA")
    buf = io.BytesIO()
    la.save(buf, "PNG")
    assert decode_image(buf.getvalue()).shape == (3, 24, 20)
    p = Image.fromarray(RGB).convert("P")
    buf = io.BytesIO()
    p.save(buf, "PNG")
    np.testing.assert_array_equal(
        decode_image(buf.getvalue()), np.asarray(p.convert("RGB")).transpose(2, 0, 1)
    )
    buf = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(buf, "JPEG", quality=95)
    assert decode_image(buf.getvalue()).shape == (3, 24, 20)


def test_16bit_percentile_stretch_known_values():
    ramp = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600  # 0 .. 59400
    out = decode_image(pil_bytes(ramp, "PNG"), bands=1)[0]  # PIL I;16
    lo, hi = np.percentile(ramp, [2, 98])
    expected = np.rint(np.clip((ramp - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    # uint16 TIFF, one band per rule: stretched, constant max -> 255, constant 0 -> 0
    arr = np.stack([ramp, np.full_like(ramp, 65535), np.zeros_like(ramp)])
    t = decode_image(tif_bytes(arr, photometric="minisblack", planarconfig="separate"))
    np.testing.assert_array_equal(t[0], expected)
    assert (t[1] == 255).all() and (t[2] == 0).all()
    big_endian = Image.frombytes("I;16B", (10, 10), ramp.astype(">u2").tobytes())
    buf = io.BytesIO()
    big_endian.save(buf, "TIFF")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), bands=1)[0], expected)


def test_float_and_int_tiff():
    f = np.linspace(-1, 3, 64, dtype=np.float32).reshape(1, 8, 8)
    f[0, 0, 0] = np.nan
    f[0, 0, 1] = np.inf
    out = decode_image(tif_bytes(f), bands=1)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out.max() == 255
    const = np.full((8, 8), 0.5, np.float32)
    assert (decode_image(tif_bytes(const), bands=1) == 128).all()  # constant float: clip(x, 0, 1) * 255
    assert (to_uint8(np.ones((1, 2, 2), bool)) == 255).all()


def test_resize():
    out = decode_image(pil_bytes(RGB, "PNG"), size=8)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    flat = np.full((40, 40, 3), 123, np.uint8)
    assert (decode_image(pil_bytes(flat, "PNG"), size=13) == 123).all()
    x = RNG.integers(0, 256, size=(6, 16, 16), dtype=np.uint8)
    assert decode_image(
        tif_bytes(x, photometric="minisblack", planarconfig="separate"), bands=6, size=32
    ).shape == (6, 32, 32)
    with pytest.raises(ValueError):
        decode_image(b"x", size=0)


def test_errors_are_typed():
    png = bytearray(pil_bytes(RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8), "PNG"))
    at = png.find(b"IDAT")
    png[at + 40 : at + 60] = b"\xff" * 20  # damaged compressed data, intact header
    for data, reason in [
        (b"", "empty"),
        (b"\x00" * 300, "not an image"),
        (b"GIF89a" + b"\x00" * 4, "not an image"),
        (bytes(png), "corrupt"),
    ]:
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data)
        assert isinstance(e.value, HSSALError) and e.value.reason == reason, (data[:8], e.value)
    tif = tif_bytes(
        RNG.integers(0, 256, size=(3, 64, 64), dtype=np.uint8),
        photometric="minisblack",
        planarconfig="separate",
    )
    with pytest.raises(ImageDecodeError) as e:
        decode_image(tif[: len(tif) // 2])
    assert e.value.reason == "truncated"


def test_decode_batch_mixes_good_and_bad():
    good = pil_bytes(RGB, "PNG")
    other = pil_bytes(RGB[:10, :10], "PNG")
    images, idx, bad = decode_batch([good, b"", None, good, other], ["a", "b", "c", "d", "e"], bands=3)
    assert images.shape == (2, 3, 24, 20) and idx.tolist() == [0, 3] and idx.dtype == np.int64
    assert [sid for sid, _ in bad] == ["b", "c", "e"]
    assert (
        bad[0][1].startswith("empty") and bad[1][1].startswith("unreadable") and bad[2][1].startswith("shape")
    )
    images, idx, bad = decode_batch([good, other], ["a", "e"], size=16)
    assert images.shape == (2, 3, 16, 16) and not bad
    images, idx, bad = decode_batch([b""], ["z"], bands=4, size=8)
    assert images.shape == (0, 4, 8, 8) and idx.size == 0 and bad == [("z", "empty: zero bytes")]
    with pytest.raises(ValueError):
        decode_batch([good], ["a", "b"])
