"""N-band 16-bit chips in the loop: band selection, fixed scaling, and the run identity of the new keys."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from hssal_ray.config import config_from_dict, science_fields
from hssal_ray.data.decode import ImageDecodeError, decode_batch, decode_image
from hssal_ray.errors import ConfigError
from hssal_ray.loop.run_config import science_sha


def _tiff(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if chw.shape[0] == 1:
        tifffile.imwrite(buf, chw[0], photometric="minisblack")
    else:
        tifffile.imwrite(buf, chw, photometric="minisblack", planarconfig="separate")
    return buf.getvalue()


def test_band_select_picks_bands_in_order_and_value_range_scales_linearly():
    chw = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 1000, 2000, 3000)])
    out = decode_image(_tiff(chw), bands=3, select=[4, 2, 1], value_range=[0, 3000])
    assert out.dtype == np.uint8 and out.shape == (3, 8, 8)
    assert [int(out[i, 0, 0]) for i in range(3)] == [255, 85, 8]  # 3000, 1000, 100 of 3000


def test_fixed_range_keeps_brightness_across_chips_where_the_stretch_does_not():
    rng = np.random.default_rng(0)
    dark = rng.integers(100, 300, (1, 16, 16)).astype(np.uint16)
    bright = dark + 2000
    stretch = [decode_image(_tiff(c), bands=1).mean() for c in (dark, bright)]
    fixed = [decode_image(_tiff(c), bands=1, value_range=[0, 4000]).mean() for c in (dark, bright)]
    assert abs(stretch[0] - stretch[1]) < 1.0
    assert fixed[1] - fixed[0] > 100


def test_band_beyond_the_image_is_a_bad_sample_not_a_crash():
    chw = np.zeros((2, 8, 8), np.uint16)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(_tiff(chw), bands=3, select=[3, 2, 1])
    assert e.value.reason == "band count"
    images, good, bad = decode_batch([_tiff(chw)], ["a"], bands=3, select=[3, 2, 1])
    assert len(good) == 0 and bad[0][0] == "a" and "band count" in bad[0][1]


def test_four_band_chip_without_selection_needs_four_bands():
    chw = np.zeros((4, 8, 8), np.uint16)
    assert decode_image(_tiff(chw), bands=4).shape == (4, 8, 8)
    with pytest.raises(ImageDecodeError):
        decode_image(_tiff(chw), bands=3)


def test_new_keys_at_their_default_leave_the_run_identity_unchanged():
    base = config_from_dict({"data": {"bands": 3}})
    assert "band_select" not in science_fields(base)["data"]
    assert "value_range" not in science_fields(base)["data"]
    assert science_sha(config_from_dict({"data": {"band_select": None}})) == science_sha(base)
    other = config_from_dict({"data": {"band_select": [3, 2, 1], "value_range": [0, 3000]}})
    assert science_sha(other) != science_sha(base)
    assert science_fields(other)["data"]["band_select"] == [3, 2, 1]


@pytest.mark.parametrize(
    "data",
    [{"band_select": [1, 2]}, {"band_select": [0, 1, 2]}, {"value_range": [5, 5]}, {"value_range": [1]}],
)
def test_bad_band_keys_are_one_line_errors(data):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": data})
    assert str(e.value).startswith("data.")
