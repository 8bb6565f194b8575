"""``_io``: atomic writes (temp file + rename, nothing left behind), paths and URIs."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pytest

from hssal_ray import _io


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path) -> None:
    p = str(tmp_path / "sub" / "f.txt")
    _io.atomic_write_text(p, "one")
    _io.atomic_write_text(p, "two")
    assert _io.read_text(p) == "two"
    assert os.listdir(tmp_path / "sub") == ["f.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    p = str(tmp_path / "f.json")
    _io.atomic_write_json(p, {"a": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write_json(p, {"a": 2})
    monkeypatch.undo()
    assert _io.read_json(p) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]  # the temp file was removed


def test_atomic_files_get_the_usual_permissions(tmp_path) -> None:
    p = str(tmp_path / "f.bin")
    _io.atomic_write_bytes(p, b"x")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_json_takes_numpy_values(tmp_path) -> None:
    p = str(tmp_path / "m.json")
    _io.atomic_write_json(p, {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(2)})
    assert _io.read_json(p) == {"i": 3, "f": 0.5, "a": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        _io.atomic_write_json(p, {"x": object()})


def test_parquet_round_trip(tmp_path) -> None:
    p = str(tmp_path / "t.parquet")
    t = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    _io.atomic_write_parquet(p, t)
    assert _io.read_parquet(p).equals(t)
    assert _io.read_parquet(p, columns=["y"]).column_names == ["y"]


def test_paths_and_uris(tmp_path) -> None:
    assert _io.is_uri("s3://bucket/x") and _io.is_uri("gs://b/x")
    assert not _io.is_uri("file:///tmp/x") and not _io.is_uri("/tmp/x")
    assert (
        _io.join("s3://bucket/run/", "/round_000/", "scores.parquet")
        == "s3://bucket/run/round_000/scores.parquet"
    )
    assert _io.join("/a", "b", "c") == os.path.join("/a", "b", "c")
    uri = "file://" + str(tmp_path / "u.txt")
    _io.atomic_write_text(uri, "via uri")
    assert (tmp_path / "u.txt").read_text() == "via uri" and _io.exists(uri)


def test_listdir_remove_exists(tmp_path) -> None:
    d = str(tmp_path / "d")
    assert _io.listdir(d) == []
    _io.makedirs(d)
    _io.atomic_write_text(_io.join(d, "b"), "")
    _io.atomic_write_text(_io.join(d, "a"), "")
    assert _io.listdir(d) == ["a", "b"]
    _io.remove(_io.join(d, "a"))
    _io.remove(_io.join(d, "missing"))  # no error
    assert _io.listdir(d) == ["b"]
    _io.remove(d)
    assert not _io.exists(d)


def test_unique_names_differ() -> None:
    a, b = _io.unique_name("part", ".parquet"), _io.unique_name("part", ".parquet")
    assert a != b and a.startswith("part-") and a.endswith(".parquet")
