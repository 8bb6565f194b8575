"""Bad input, end to end through the pure data layer: each case has one exact, asserted outcome.

Files in a class folder are scanned (scan lists, never decodes), read with ``load_bytes`` and decoded
with ``decode_batch``: broken files come back as ``(sample_id, reason)``, the rest as images.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hssal_ray.data.catalog import scan
from hssal_ray.data.decode import ImageDecodeError, decode_batch, decode_image
from hssal_ray.data.fetch import load_bytes
from hssal_ray.data.synthetic import CORRUPT_CASES, make_corrupt_files
from hssal_ray.errors import DataError
from tests.data.make_tiny import tiny_imagefolder


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad") / "ds")
    tiny_imagefolder(root, num_classes=2, per_class=3, size=16)
    files = make_corrupt_files(os.path.join(root, "synthetic_farmland"), size=16)
    return root, files


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_each_case_exact_outcome(corrupt, case):
    _, files = corrupt
    data = open(files[case], "rb").read()
    expected = CORRUPT_CASES[case][1]
    if expected is None:
        out = decode_image(data, bands=3)
        assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    else:
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data, bands=3)
        assert e.value.reason == expected


def test_decoded_values_of_the_convertible_cases(corrupt):
    _, files = corrupt

    def dec(case: str) -> np.ndarray:
        return decode_image(open(files[case], "rb").read())

    gray = dec("grayscale")
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # replicated to 3 bands
    left, right = np.s_[:, :, :8], np.s_[:, :, 8:]
    g16 = dec("gray16_png")  # 1000 | 3000 -> 2nd-98th percentile stretch -> 0 | 255
    assert (g16[left] == 0).all() and (g16[right] == 255).all()
    r16 = dec("rgb16_tif")
    assert (r16[0][:, :8] == 0).all() and (r16[0][:, 8:] == 255).all()
    assert (r16[1] == 255).all() and (r16[2] == 0).all()  # constant 65535 / 0 bands
    rgba = dec("rgba")
    assert rgba.shape == (3, 16, 16)  # alpha dropped
    five = open(files["five_band_tif"], "rb").read()
    assert decode_image(five, bands=5).shape == (5, 16, 16)  # fine when 5 bands are configured


def test_pipeline_path_skips_and_lists_bad_samples(corrupt):
    root, _ = corrupt
    cat = scan(root)
    assert len(cat) == 6 + len(CORRUPT_CASES)
    table = cat.table
    missing = "synthetic_forest/synthetic_forest_0001.png"
    os.rename(os.path.join(root, missing), os.path.join(root, missing + ".moved"))
    try:
        blobs = load_bytes(cat.root, cat.kind, table)
    finally:
        os.rename(os.path.join(root, missing + ".moved"), os.path.join(root, missing))
    ids = table["sample_id"].to_pylist()
    images, good, bad = decode_batch(blobs, ids, bands=3, size=16)
    reasons = {sid: r.split(":")[0] for sid, r in bad}
    expected = {f"synthetic_farmland/{name}": reason for name, reason in CORRUPT_CASES.values() if reason}
    expected[missing] = "unreadable"
    assert reasons == expected
    assert images.shape == (len(ids) - len(expected), 3, 16, 16)
    assert sorted(ids[i] for i in good) == sorted(set(ids) - set(expected))


def test_missing_and_empty_root_errors_name_the_path(tmp_path):
    for path, match in [(tmp_path / "missing", "does not exist"), (tmp_path, "no images")]:
        with pytest.raises(DataError, match=match) as e:
            scan(str(path))
        assert str(path) in str(e.value)
