"""The embedding store at archive scale: id lookup, memory-mapped views, bounded reads, encode progress."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hssal_ray.errors import DataError
from hssal_ray.frozen import store as st
from hssal_ray.frozen.store import EmbeddingStore, EncodeProgress, open_store, read_rows, scan_rows


def test_rows_of_is_a_lookup_in_sorted_ids() -> None:
    ids = ["b/2.png", "a/1.png", "c/10.png", "c/9.png", "é/3.png"]  # not sorted, non-ASCII
    s = EmbeddingStore(
        path="mem", ids=ids, views={"none": np.zeros((5, 2), np.float16)}, missing=np.zeros(5, bool)
    )
    assert s.rows_of(["c/9.png", "a/1.png", "é/3.png", "b/2.png"]).tolist() == [3, 1, 4, 0]
    assert s.rows_of(pa.chunked_array([["c/10.png"], ["b/2.png"]])).tolist() == [2, 0]
    assert s.rows_of(np.array(["a/1.png"], dtype=object)).dtype == np.int64
    assert s.rows_of([]).tolist() == []
    for bad in (["a/1.png", "a/1"], ["a/1.png.too-long-for-the-store"], ["zz"]):
        with pytest.raises(DataError, match="not in the embedding store"):
            s.rows_of(bad)
    assert s.ids.tolist() == ids and len(s) == 5
    with pytest.raises(DataError, match="twice"):
        EmbeddingStore(path="mem", ids=["b", "a", "b"], views={}, missing=np.zeros(3, bool))


def _old_store(path: Path, n: int = 10, dim: int = 6, chunk: int = 4) -> dict[str, np.ndarray]:
    """A store as the encode writes it: Parquet parts and a complete meta.json (no arrays yet)."""
    rng = np.random.default_rng(0)
    views = {v: rng.normal(size=(n, dim)).astype(np.float16) for v in st.view_names(1)}
    views["none"][3] = np.nan  # an undecodable image
    path.mkdir(parents=True)
    for i, s in enumerate(range(0, n, chunk)):
        e = min(n, s + chunk)
        cols = {"sample_id": pa.array([f"id{j:03d}" for j in range(s, e)])}
        for v, a in views.items():
            cols[v] = pa.FixedSizeListArray.from_arrays(pa.array(a[s:e].reshape(-1)), dim)
        pq.write_table(pa.table(cols), path / f"part-{i:05d}.parquet")
    meta = {"key": "k1", "views": list(views), "rows": n, "chunks": -(-n // chunk), "complete": True}
    (path / "meta.json").write_text(json.dumps(meta))
    return views


def test_a_parquet_store_is_converted_once_to_memory_mapped_arrays(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(st, "CHUNK_ROWS", 4)
    path = tmp_path / "store"
    views = _old_store(path)
    s = open_store(str(path))
    assert s.key == "k1" and s.ids.tolist() == [f"id{j:03d}" for j in range(10)]
    for v, a in views.items():
        assert isinstance(s.views[v], np.memmap) and not s.views[v].flags.writeable
        np.testing.assert_array_equal(s.views[v], a)
    assert s.missing.tolist() == [j == 3 for j in range(10)]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["arrays"] == {"format": "npy", "dtype": "float16", "views": list(views), "rows": 10, "dim": 6}
    assert meta["complete"] and meta["key"] == "k1"
    stamp = {p.name: os.stat(p).st_mtime_ns for p in path.glob("view-*.npy")}
    # opened again: the arrays are read as they are, even with the parts gone
    for p in path.glob("part-*.parquet"):
        p.rename(tmp_path / p.name)
    again = open_store(str(path))
    assert {p.name: os.stat(p).st_mtime_ns for p in path.glob("view-*.npy")} == stamp
    np.testing.assert_array_equal(again.views["weak_0"], views["weak_0"])
    # a damaged array is written again from the parts
    for p in tmp_path.glob("part-*.parquet"):
        p.rename(path / p.name)
    (path / "view-strong_0.npy").write_bytes((path / "view-strong_0.npy").read_bytes()[:100])
    fixed = open_store(str(path))
    np.testing.assert_array_equal(fixed.views["strong_0"], views["strong_0"])
    assert not list(path.glob(".*.tmp"))


def test_open_store_refuses_an_incomplete_or_other_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _old_store(path)
    with pytest.raises(DataError, match="12 rows"):
        open_store(str(path), rows=12)
    (path / "meta.json").write_text(json.dumps({"key": "k1", "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        open_store(str(path))


def _rss_file_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_scanning_a_mapped_view_keeps_its_pages_out_of_the_process(tmp_path: Path) -> None:
    """A full pass over a 192 MB view leaves < 40 MB of it resident; without dropping pages, all of it."""
    n, d = 75_000, 1280
    path = tmp_path / "view.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, d)})
        block = np.random.default_rng(0).normal(size=(5000, d)).astype(np.float16)
        for _ in range(n // 5000):
            f.write(block.tobytes())
    view = np.load(path, mmap_mode="r")
    rows = np.arange(n)
    before = _rss_file_mb()
    total = 0.0
    for _, x in scan_rows(view, rows):
        total += float(x[:, 0].sum())
    assert _rss_file_mb() - before < 40
    assert total == pytest.approx(float(block[:, 0].astype(np.float32).sum()) * (n // 5000), rel=1e-3)
    sums = [float(view[s : s + 8192, 0].astype(np.float32).sum()) for s in range(0, n, 8192)]  # no drop
    assert _rss_file_mb() - before > 150
    assert sum(sums) == pytest.approx(total, rel=1e-3)
    st.release(view)
    assert _rss_file_mb() - before < 40
    # gathers: arbitrary rows, or a contiguous run read as one slice
    np.testing.assert_array_equal(read_rows(view, np.array([7, 3, 3])), np.asarray(view)[[7, 3, 3]])
    np.testing.assert_array_equal(read_rows(view, np.arange(10, 20)), np.asarray(view)[10:20])


def test_encode_progress_without_a_terminal_prints_rate_and_eta() -> None:
    lines: list[str] = []
    now = [0.0]
    bar = EncodeProgress(10_000, 3, lines.append, tty=False, interval=30.0, clock=lambda: now[0])
    now[0] = 10.0
    bar.batch(100)  # within 30 s of the start: quiet
    assert lines == []
    now[0] = 40.0
    bar.batch(100)
    now[0] = 80.0
    bar.chunk(4096)
    assert lines == [
        "[hssal] encode: 200/10000 images (chunk 1/3), 5.0 img/s, ETA 33 min",
        "[hssal] encode: 4096/10000 images (chunk 2/3, written), 51.2 img/s, ETA 115 s",
    ]
    assert bar.close() == 80.0
    quiet: list[str] = []
    tty = EncodeProgress(10, 1, quiet.append, tty=True)
    tty.batch(5)
    tty.chunk(10)
    tty.close()
    assert quiet == []  # on a terminal the tqdm bar shows it


def test_a_store_whose_arrays_cannot_be_written_is_read_into_memory(tmp_path: Path, monkeypatch) -> None:
    """A read-only cache (another user's, a read-only mount) still serves the run, from memory."""
    monkeypatch.setattr(st, "CHUNK_ROWS", 4)
    path = tmp_path / "store"
    views = _old_store(path)

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(st, "write_arrays", refused)
    s = open_store(str(path))
    assert not isinstance(s.views["none"], np.memmap) and s.key == "k1"
    np.testing.assert_array_equal(s.views["weak_0"], views["weak_0"])
    assert s.missing.tolist() == [j == 3 for j in range(10)]
