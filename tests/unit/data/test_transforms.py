"""augment_batch: shapes, normalisation, per-sample determinism, weak/strong semantics, N bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hssal_ray.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_batch,
    augment_image,
    default_mean_std,
)

RNG = np.random.default_rng(0)
IMGS = RNG.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
SEEDS = np.array([0, 1, 2, 3, 2**62, -5], dtype=np.int64)


def test_default_mean_std():
    assert default_mean_std(3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert default_mean_std(5) == ((0.5,) * 5, (0.25,) * 5)
    assert default_mean_std(1) == ((0.5,), (0.25,))


def test_none_is_center_crop_and_normalise():
    out = augment_batch(IMGS, SEEDS, "none", 32)
    m = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, (IMGS / 255.0 - m) / s, rtol=1e-5, atol=1e-5)
    crop = augment_batch(IMGS, SEEDS, "none", 20, mean=[0.0], std=[1.0])
    np.testing.assert_allclose(crop * 255.0, IMGS[:, :, 6:26, 6:26], atol=1e-3)
    small = augment_batch(IMGS[:, :, :8, :8].copy(), SEEDS, "none", 16)  # smaller than crop: resized
    assert small.shape == (6, 3, 16, 16)


@pytest.mark.parametrize("kind", ["weak", "strong"])
@pytest.mark.parametrize("bands", [1, 3, 5])
def test_shapes_and_determinism(kind, bands):
    imgs = RNG.integers(0, 256, size=(6, bands, 32, 32), dtype=np.uint8)
    a = augment_batch(imgs, SEEDS, kind, 24)
    assert a.shape == (6, bands, 24, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, augment_batch(imgs, SEEDS, kind, 24))
    perm = np.array([5, 3, 1, 0, 2, 4])
    np.testing.assert_array_equal(augment_batch(imgs[perm], SEEDS[perm], kind, 24), a[perm])
    single = augment_batch(imgs[2:3], SEEDS[2:3], kind, 24)
    np.testing.assert_array_equal(single[0], a[2])
    other = augment_batch(imgs, SEEDS + 1000, kind, 24)
    assert not np.array_equal(other, a)


def test_global_rng_untouched():
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    augment_batch(IMGS, SEEDS, "strong", 32)
    augment_batch(RNG.integers(0, 256, size=(2, 5, 32, 32), dtype=np.uint8), SEEDS[:2], "strong", 32)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_weak_is_flip_plus_crop_of_reflect_padded_image():
    img = IMGS[0]
    pad = 4  # 12.5% of 32
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    padded_flipped = np.pad(img[:, :, ::-1], ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    flips = 0
    for seed in range(12):
        out = augment_image(img, seed, "weak", 32)
        hits = [
            flipped
            for flipped, src in ((False, padded), (True, padded_flipped))
            for y in range(2 * pad + 1)
            for x in range(2 * pad + 1)
            if np.array_equal(src[:, y : y + 32, x : x + 32], out)
        ]
        assert hits, f"seed {seed}: weak view is not a crop of the padded image"
        flips += hits[0]
    assert 0 < flips < 12


def test_strong_has_cutout_square():
    img = RNG.integers(0, 120, size=(3, 64, 64), dtype=np.uint8)  # random pixels are never 127
    for seed in range(10):
        out = augment_image(img, seed, "strong", 64)
        grey = (out == 127).all(axis=0)
        ys, xs = np.nonzero(grey)
        assert grey.sum() >= 25, f"seed {seed}: no cutout"
        assert grey[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].mean() > 0.9  # a filled box
        assert max(np.ptp(ys), np.ptp(xs)) + 1 <= int(round(0.5 * 64)) + 1


def test_strong_differs_from_weak_on_average():
    weak = augment_batch(IMGS, SEEDS, "weak", 32)
    strong = augment_batch(IMGS, SEEDS, "strong", 32)
    assert np.abs(weak - strong).mean() > 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        augment_batch(IMGS, SEEDS, "medium", 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(IMGS.astype(np.float32), SEEDS, "weak", 32)
    with pytest.raises(ValueError, match="seeds"):
        augment_batch(IMGS, SEEDS[:2], "weak", 32)
    with pytest.raises(ValueError, match="mean/std"):
        augment_batch(IMGS, SEEDS, "weak", 32, mean=[0.5, 0.5], std=[0.2, 0.2])
    empty = augment_batch(np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64), "strong", 16)
    assert empty.shape == (0, 3, 16, 16)
