"""Catalog: scanning ImageFolder / flat / shard roots, split, save/load, load_bytes."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from hssal_ray.data.catalog import CLASSES_KEY, MANIFEST_SCHEMA, Catalog, scan
from hssal_ray.data.fetch import load_bytes
from hssal_ray.errors import DataError
from tests.data.make_tiny import tiny_flat, tiny_imagefolder, tiny_shards, write_plain_shard

UCM = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "ucm")


@pytest.fixture()
def folder(tmp_path):
    return tiny_imagefolder(str(tmp_path / "ds"), num_classes=3, per_class=10)


def test_imagefolder_scan(folder):
    cat = scan(folder)
    t = cat.table
    assert cat.kind == "files" and t.schema.equals(MANIFEST_SCHEMA)
    assert cat.class_names == ("synthetic_farmland", "synthetic_forest", "synthetic_residential")
    assert len(cat) == 30 and cat.num_classes == 3
    ids = t["sample_id"].to_pylist()
    assert ids == sorted(ids) and ids[0] == "synthetic_farmland/synthetic_farmland_0000.png"
    assert t["source"].to_pylist() == ids and set(t["row"].to_pylist()) == {-1}
    for row in t.to_pylist():
        assert cat.class_names[row["label"]] == row["class_name"] == row["sample_id"].split("/")[0]
    per_class = Counter((r["class_name"], r["split"]) for r in t.to_pylist())
    assert all(per_class[(c, "test")] == 2 and per_class[(c, "train")] == 8 for c in cat.class_names)


def test_split_is_stable_seeded_and_stratified(folder):
    a, b = scan(folder), scan(folder)
    assert a.table.equals(b.table)
    c = scan(folder, seed=1)
    assert c.table["sample_id"].equals(a.table["sample_id"])
    assert c.table["split"].to_pylist() != a.table["split"].to_pylist()
    d = scan(folder, test_fraction=0.25)  # 2.5 per class rounds half up to 3
    assert Counter(d.table["split"].to_pylist())["test"] == 9
    assert scan(folder, test_fraction=0.0).split_ids("test") == []


def test_split_depends_only_on_id_not_on_other_files(tmp_path, folder):
    base = scan(folder)
    os.remove(os.path.join(folder, "synthetic_forest", "synthetic_forest_0003.png"))
    after = dict(
        zip(scan(folder).table["sample_id"].to_pylist(), scan(folder).table["split"].to_pylist(), strict=True)
    )
    # ranks inside farmland are unchanged, so its split is unchanged
    for sid, split in zip(base.table["sample_id"].to_pylist(), base.table["split"].to_pylist(), strict=True):
        if sid.startswith("synthetic_farmland/"):
            assert after[sid] == split


def test_nested_hidden_case_and_non_images(tmp_path):
    root = tiny_imagefolder(str(tmp_path / "ds"), num_classes=2, per_class=2)
    png = open(os.path.join(root, "synthetic_farmland", "synthetic_farmland_0000.png"), "rb").read()
    os.makedirs(os.path.join(root, "synthetic_forest", "sub", "deeper"))
    os.makedirs(os.path.join(root, ".git", "x"))
    files = {
        "synthetic_forest/sub/deeper/n.PNG": png,  # nested + upper-case extension
        "synthetic_forest/UPPER.JPEG": png,  # counted (decode is not scan's business)
        "synthetic_forest/.hidden.png": png,
        ".git/x/img.png": png,
        "synthetic_forest/notes.txt": b"x",
        "README.md": b"readme",
        "loose.png": png,  # directly under an ImageFolder root: ignored
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    cat = scan(root)
    ids = set(cat.table["sample_id"].to_pylist())
    assert "synthetic_forest/sub/deeper/n.PNG" in ids and "synthetic_forest/UPPER.JPEG" in ids
    assert not {"synthetic_forest/.hidden.png", ".git/x/img.png", "loose.png", "README.md"} & ids
    assert len(cat) == 6 and cat.class_names == ("synthetic_farmland", "synthetic_forest")


def test_flat_unlabeled(tmp_path):
    root = tiny_flat(str(tmp_path / "pool"))
    cat = scan(root)
    assert cat.class_names == () and len(cat) == 6
    assert set(cat.table["label"].to_pylist()) == {-1}
    assert set(cat.table["split"].to_pylist()) == {"train"}
    assert cat.table["class_name"].null_count == 6
    # explicit flat layout on a class tree: everything unlabeled
    tree = tiny_imagefolder(str(tmp_path / "tree"), num_classes=2, per_class=2)
    assert set(scan(tree, layout="flat").table["label"].to_pylist()) == {-1}


def test_file_uri_root(folder):
    a, b = scan(folder), scan("file://" + os.path.abspath(folder))
    assert a.table.equals(b.table) and b.root.startswith("file://")
    assert load_bytes(b.root, b.kind, b.table.slice(0, 2)) == load_bytes(a.root, a.kind, a.table.slice(0, 2))


def test_missing_empty_and_bad_roots(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist") as e:
        scan(missing)
    assert missing in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images") as e:
        scan(str(empty))
    assert str(empty) in str(e.value)
    with pytest.raises(DataError, match="not a directory"):
        scan(str(empty / "notes.txt"))
    with pytest.raises(ValueError):
        scan(str(empty), test_fraction=1.0)
    with pytest.raises(ValueError):
        scan(str(empty), layout="weird")  # type: ignore[arg-type]


def test_save_load_roundtrip(tmp_path, folder):
    cat = scan(folder)
    cat.save(str(tmp_path / "m" / "catalog.parquet"))
    back = Catalog.load(str(tmp_path / "m" / "catalog.parquet"))
    assert back.table.equals(cat.table) and back.class_names == cat.class_names
    assert (back.root, back.kind) == (cat.root, "files")
    uri = "file://" + str(tmp_path / "u" / "catalog.parquet")
    cat.save(uri)
    assert Catalog.load(uri).table.equals(cat.table)
    assert not [p for p in os.listdir(tmp_path / "m") if p.endswith(".tmp")]
    with pytest.raises(DataError, match="cannot read catalog"):
        Catalog.load(str(tmp_path / "absent.parquet"))
    write_plain_shard(str(tmp_path / "other.parquet"), {"a": [1]})
    with pytest.raises(DataError, match="not a catalog"):
        Catalog.load(str(tmp_path / "other.parquet"))


def test_summary_and_split_ids(folder):
    cat = scan(folder)
    assert "30 samples" in cat.summary() and "train/test 24/6" in cat.summary()
    assert len(cat.split_ids("train")) == 24 and set(cat.split_ids("test")).isdisjoint(cat.split_ids("train"))
    assert cat.split_ids("val") == []  # no validation split unless asked for
    with pytest.raises(ValueError):
        cat.split_ids("nope")
    val = scan(folder, val_fraction=0.25)
    assert "train/test/val 18/6/6" in val.summary()
    assert set(val.split_ids("test")) == set(cat.split_ids("test"))  # the test split never moves
    assert set(val.split_ids("val")) <= set(cat.split_ids("train"))


def test_load_bytes_files(folder):
    cat = scan(folder)
    rows = cat.table.slice(0, 3)
    blobs = load_bytes(cat.root, cat.kind, rows)
    for sid, blob in zip(rows["sample_id"].to_pylist(), blobs, strict=True):
        assert blob == open(os.path.join(folder, sid), "rb").read()
    os.remove(os.path.join(folder, rows["sample_id"][1].as_py()))
    batch = {"source": np.asarray(rows["source"].to_pylist(), dtype=object), "row": np.asarray([-1, -1, -1])}
    again = load_bytes(cat.root, cat.kind, batch)  # Ray Data numpy-batch form
    assert again[0] == blobs[0] and again[1] is None and again[2] == blobs[2]
    with pytest.raises(ValueError):
        load_bytes(cat.root, "tarballs", rows)


def test_shards_roundtrip_and_load_bytes(tmp_path, folder):
    files = scan(folder)
    dst = tiny_shards(folder, str(tmp_path / "shards"), rows_per_shard=7, row_group_size=3)
    sh = scan(dst)
    assert sh.kind == "shards" and sh.class_names == files.class_names
    cols = ["sample_id", "label", "class_name", "split"]
    assert sh.table.select(cols).equals(files.table.select(cols))
    assert sh.table["source"].to_pylist()[:8] == ["shard-00000.parquet"] * 7 + ["shard-00001.parquet"]
    order = [29, 0, 15, 7, 6, 22, 3]  # across shards and row groups, out of order
    got = load_bytes(sh.root, sh.kind, sh.table.take(order))
    assert got == load_bytes(files.root, files.kind, files.table.take(order))
    bogus = {"source": ["shard-00000.parquet", "shard-00009.parquet"], "row": [99, 0]}
    assert load_bytes(sh.root, sh.kind, bogus) == [None, None]


def test_duplicate_ids_across_shards(tmp_path):
    d = tmp_path / "dup"
    d.mkdir()
    meta = {CLASSES_KEY.encode(): json.dumps(["a"]).encode()}
    for i in range(2):
        write_plain_shard(
            str(d / f"shard-{i:05d}.parquet"),
            {
                "sample_id": ["a/x.png", f"a/{i}.png"],
                "image": [b"1", b"2"],
                "label": pa.array([0, 0], pa.int32()),
                "class_name": ["a", "a"],
            },
            meta,
        )
    with pytest.raises(DataError, match="duplicate sample_id 'a/x.png'") as e:
        scan(str(d))
    assert "shard-00000.parquet" in str(e.value) and "shard-00001.parquet" in str(e.value)
    assert str(d) in str(e.value)


def test_unreadable_and_inconsistent_shards(tmp_path, folder):
    dst = tiny_shards(folder, str(tmp_path / "s"), rows_per_shard=10)
    bad = os.path.join(dst, "shard-00001.parquet")
    with open(bad, "r+b") as f:
        f.write(b"garbage!" * 8)
    with pytest.raises(DataError, match="unreadable shard") as e:
        scan(dst)
    assert bad in str(e.value)
    other = tmp_path / "o"
    other.mkdir()
    write_plain_shard(
        str(other / "a.parquet"), {"sample_id": ["x"], "image": [b"1"]}, {CLASSES_KEY.encode(): b'["a"]'}
    )
    write_plain_shard(
        str(other / "b.parquet"), {"sample_id": ["y"], "image": [b"1"]}, {CLASSES_KEY.encode(): b'["b"]'}
    )
    with pytest.raises(DataError, match="other class names"):
        scan(str(other))
    nocol = tmp_path / "n"
    nocol.mkdir()
    write_plain_shard(str(nocol / "a.parquet"), {"id": ["x"]})
    with pytest.raises(DataError, match="lacks"):
        scan(str(nocol))


def test_foreign_shards_without_metadata(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    write_plain_shard(
        str(d / "part.parquet"),
        {"sample_id": ["b/1", "a/1", "c/1"], "image": [b"", b"", b""], "class_name": ["b", "a", None]},
    )
    cat = scan(str(d))
    assert cat.class_names == ("a", "b")
    assert dict(zip(cat.table["sample_id"].to_pylist(), cat.table["label"].to_pylist(), strict=True)) == {
        "a/1": 0,
        "b/1": 1,
        "c/1": -1,
    }


def test_mixed_root_needs_layout(tmp_path, folder):
    tiny_shards(folder, os.path.join(folder, "packed"))
    with pytest.raises(DataError, match="both image files and Parquet shards"):
        scan(folder)
    assert scan(folder, layout="imagefolder").kind == "files"


@pytest.mark.skipif(not os.path.isdir(UCM), reason="UCM not available at ../shared/data/ucm")
def test_ucm_acceptance(tmp_path, monkeypatch):
    import PIL.Image
    import tifffile

    def no_decode(*a, **k):
        raise AssertionError("scan must not decode images")

    with monkeypatch.context() as m:
        m.setattr(PIL.Image, "open", no_decode)
        m.setattr(tifffile, "TiffFile", no_decode)
        t0 = time.perf_counter()
        a = scan(UCM)
        took = time.perf_counter() - t0
        b = scan(UCM)
    assert took < 5.0
    assert len(a) == 2100 and a.num_classes == 21
    assert Counter(a.table["split"].to_pylist()) == {"train": 1680, "test": 420}
    assert a.table.equals(b.table)
    assert all(
        n == 20
        for (c, s), n in Counter(
            zip(a.table["class_name"].to_pylist(), a.table["split"].to_pylist(), strict=True)
        ).items()
        if s == "test"
    )
    sh = scan(tiny_shards(UCM, str(tmp_path / "ucm_shards"), rows_per_shard=700, row_group_size=32))
    cols = ["sample_id", "label", "class_name", "split"]
    assert sh.table.select(cols).equals(a.table.select(cols)) and sh.class_names == a.class_names
    assert math.isclose(len(sh.split_ids("test")) / len(sh), 0.2)


def _reference_test_mask(ids: list[str], labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """The split rule of the module docstring, written out plainly (every id hashed)."""
    import hashlib

    keys = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest(), "big") for s in ids],
        dtype=np.uint64,
    )
    is_test = np.zeros(len(ids), dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = int(math.floor(test_fraction * idx.size + 0.5))
        is_test[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    return is_test


@pytest.mark.parametrize("as_arrow", [False, True])
def test_test_mask_hashes_only_labeled_rows_in_chunks(monkeypatch, as_arrow):
    from hssal_ray.data import catalog

    monkeypatch.setattr(catalog, "_HASH_CHUNK", 7)  # several chunks, a partial last one
    rng = np.random.default_rng(3)
    ids = sorted(f"c{rng.integers(1e9)}/{i}.png" for i in range(200))
    labels = rng.integers(-1, 4, size=200)  # about a fifth unlabeled
    arr = pa.chunked_array([ids[:50], ids[50:]]) if as_arrow else ids
    for frac, seed in ((0.2, 0), (0.5, 7), (0.0, 1)):
        got = catalog._test_mask(arr, labels, frac, seed)
        np.testing.assert_array_equal(got, _reference_test_mask(ids, labels, frac, seed))
        assert not got[labels < 0].any()
    assert not catalog._test_mask(arr, np.full(200, -1), 0.2, 0).any()


def test_strictly_increasing():
    from hssal_ray.data.catalog import _strictly_increasing

    assert _strictly_increasing(pa.array(["a", "b", "c"])) and _strictly_increasing(pa.array(["a"]))
    assert _strictly_increasing(pa.chunked_array([["a", "b"], ["c"], ["d", "e", "f"]]))
    assert not _strictly_increasing(pa.chunked_array([["a", "c"], ["b"]]))
    assert not _strictly_increasing(pa.chunked_array([["a", "b"], ["b", "c"]]))  # duplicate
    assert not _strictly_increasing(pa.array(["a", None, "c"]))


def test_unsorted_shards_are_sorted_and_split_table_shares_the_manifest(tmp_path):
    d = tmp_path / "u"
    d.mkdir()
    meta = {CLASSES_KEY.encode(): json.dumps(["a", "b"]).encode()}
    ids = [[f"x{i:03d}" for i in range(20, 40)], [f"x{i:03d}" for i in range(0, 20)]]  # shard 1 < shard 0
    for s, part in enumerate(ids):
        write_plain_shard(
            str(d / f"shard-{s:05d}.parquet"),
            {
                "sample_id": part,
                "image": [b"1"] * 20,
                "label": pa.array([-1] * 20, pa.int32()),
                "class_name": pa.array([None] * 20, pa.string()),
            },
            meta,
        )
    cat = scan(str(d), test_fraction=0.2)
    assert cat.table["sample_id"].to_pylist() == sorted(ids[0] + ids[1])
    assert cat.table["source"].to_pylist()[:20] == ["shard-00001.parquet"] * 20
    assert cat.table["row"].to_pylist()[:3] == [0, 1, 2]
    assert cat.table.schema.equals(MANIFEST_SCHEMA)
    # every row is pool (train): the split is the manifest itself, not a copy
    assert cat.split_table("train") is cat.table
    test = cat.split_table("test")
    assert test.num_rows == 0 and test.schema.equals(MANIFEST_SCHEMA)
    assert "split train/test 40/0" in cat.summary()


def test_split_table_filters_when_rows_differ(folder):
    cat = scan(folder)
    train, test = cat.split_table("train"), cat.split_table("test")
    assert train is not cat.table and (train.num_rows, test.num_rows) == (24, 6)
    assert set(train["split"].to_pylist()) == {"train"} and set(test["split"].to_pylist()) == {"test"}
