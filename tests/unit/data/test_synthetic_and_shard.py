"""Synthetic dataset generator and the Parquet shard writer / CLI."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.data import shard as shard_mod
from hssal_ray.data.catalog import CLASSES_KEY, scan
from hssal_ray.data.decode import decode_image
from hssal_ray.data.fetch import load_bytes
from hssal_ray.data.shard import SHARD_SCHEMA, main, write_shards
from hssal_ray.data.synthetic import make_synthetic_rs, synthetic_class_names
from hssal_ray.errors import DataError
from tests.data.make_tiny import tiny_flat, tiny_imagefolder


def test_synthetic_is_seeded_and_clearly_named(tmp_path):
    a = make_synthetic_rs(str(tmp_path / "a"), num_classes=12, per_class=2, size=24, seed=3)
    b = make_synthetic_rs(str(tmp_path / "b"), num_classes=12, per_class=2, size=24, seed=3)
    c = make_synthetic_rs(str(tmp_path / "c"), num_classes=12, per_class=2, size=24, seed=4)
    names = sorted(os.listdir(a))
    assert names == sorted(synthetic_class_names(12)) and all(n.startswith("synthetic_") for n in names)
    assert "synthetic_class_11" in names
    cmp = filecmp.dircmp(a, b)
    assert not cmp.diff_files and all(not sub.diff_files for sub in cmp.subdirs.values())
    f = "synthetic_farmland/synthetic_farmland_0000.png"
    assert open(os.path.join(a, f), "rb").read() != open(os.path.join(c, f), "rb").read()
    img = decode_image(open(os.path.join(a, f), "rb").read())
    assert img.shape == (3, 24, 24) and img.std() > 5


def test_synthetic_classes_are_separable_but_noisy(tmp_path):
    root = make_synthetic_rs(str(tmp_path / "s"), num_classes=4, per_class=20, size=32, seed=0)
    cat = scan(root)
    x = np.stack([decode_image(b) for b in load_bytes(cat.root, cat.kind, cat.table)]).astype(np.float32)
    y = cat.table["label"].to_numpy()
    feats = np.concatenate([x.mean(axis=(2, 3)), np.abs(np.diff(x, axis=3)).mean(axis=(2, 3))], axis=1)
    train = np.arange(len(y)) % 2 == 0
    cents = np.stack([feats[train & (y == k)].mean(0) for k in range(4)])
    pred = np.argmin(((feats[~train, None] - cents[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y[~train]).mean()
    assert acc > 0.5  # far above chance (0.25): the labels carry signal
    within = np.mean([x[y == k].std(axis=0).mean() for k in range(4)])
    assert within > 10  # samples of one class vary: not a constant template


def test_synthetic_nband_flat_and_formats(tmp_path):
    nb = make_synthetic_rs(str(tmp_path / "nb"), num_classes=2, per_class=2, size=16, bands=5)
    f = os.path.join(nb, "synthetic_farmland", "synthetic_farmland_0000.tif")
    assert decode_image(open(f, "rb").read(), bands=5).shape == (5, 16, 16)
    flat = tiny_flat(str(tmp_path / "flat"))
    assert sorted(os.listdir(flat))[0] == "synthetic_00000.png" and len(os.listdir(flat)) == 6
    jp = make_synthetic_rs(str(tmp_path / "jp"), num_classes=1, per_class=1, fmt="jpg", bands=1)
    assert decode_image(
        open(os.path.join(jp, "synthetic_farmland", "synthetic_farmland_0000.jpg"), "rb").read(), bands=1
    ).shape == (1, 32, 32)
    with pytest.raises(ValueError):
        make_synthetic_rs(str(tmp_path / "x"), fmt="gif")  # type: ignore[arg-type]


def test_write_shards_roundtrip(tmp_path):
    src = tiny_imagefolder(str(tmp_path / "src"), num_classes=3, per_class=5)
    report = write_shards(src, str(tmp_path / "dst"), rows_per_shard=6, row_group_size=4, progress=False)
    assert (report.num_rows, report.num_shards, report.num_classes, report.skipped) == (15, 3, 3, ())
    assert "15 samples" in report.summary()
    names = sorted(os.listdir(tmp_path / "dst"))
    assert names == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    pf = pq.ParquetFile(str(tmp_path / "dst" / names[0]))
    assert pf.schema_arrow.remove_metadata().equals(SHARD_SCHEMA)
    assert json.loads(pf.schema_arrow.metadata[CLASSES_KEY.encode()]) == list(scan(src).class_names)
    assert pf.metadata.num_rows == 6 and pf.metadata.num_row_groups == 2
    t = pf.read()
    for sid, blob in zip(t["sample_id"].to_pylist(), t["image"].to_pylist(), strict=True):
        assert blob == open(os.path.join(src, sid), "rb").read()  # original bytes, not re-encoded
    a, b = scan(src), scan(str(tmp_path / "dst"))
    cols = ["sample_id", "label", "class_name", "split"]
    assert a.table.select(cols).equals(b.table.select(cols))


def test_write_shards_to_uri_and_unlabeled(tmp_path):
    src = tiny_flat(str(tmp_path / "pool"))
    dst = "file://" + str(tmp_path / "out")
    write_shards(src, dst, rows_per_shard=4, progress=False)
    cat = scan(dst)
    assert cat.kind == "shards" and len(cat) == 6 and cat.class_names == ()
    assert set(cat.table["label"].to_pylist()) == {-1} and cat.table["class_name"].null_count == 6


def test_write_shards_skips_unreadable_sources(tmp_path, monkeypatch):
    src = tiny_imagefolder(str(tmp_path / "src"), num_classes=2, per_class=3)
    real = shard_mod.load_bytes

    def flaky(root, kind, rows):
        out = real(root, kind, rows)
        return [
            None if sid.endswith("_0001.png") else b
            for sid, b in zip(rows["sample_id"].to_pylist(), out, strict=True)
        ]

    monkeypatch.setattr(shard_mod, "load_bytes", flaky)
    report = write_shards(src, str(tmp_path / "dst"), rows_per_shard=10, progress=False)
    assert report.num_rows == 4 and len(report.skipped) == 2 and "skipped 2" in report.summary()


def test_cli_and_overwrite(tmp_path, capsys):
    src = tiny_imagefolder(str(tmp_path / "src"), num_classes=2, per_class=4)
    dst = str(tmp_path / "dst")
    assert main([src, dst, "--rows-per-shard", "3", "--no-progress"]) == 0
    assert "wrote 8 samples" in capsys.readouterr().out
    assert len(os.listdir(dst)) == 3
    assert main([src, dst, "--rows-per-shard", "8", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([src, dst, "--rows-per-shard", "8", "--no-progress", "--overwrite"]) == 0
    assert os.listdir(dst) == ["shard-00000.parquet"]  # no stale shards left behind
    assert len(scan(dst)) == 8
    assert main([str(tmp_path / "missing"), dst, "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError):
        write_shards(src, dst, rows_per_shard=0)
    with pytest.raises(DataError):
        write_shards(src, dst, progress=False)
