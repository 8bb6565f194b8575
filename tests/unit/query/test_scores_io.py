"""The scores-file contract: round trips, part directories, bad data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hssal_ray.errors import DataError
from hssal_ray.query.scores_io import exclude_mask, load_pool, read_id_list, scores_columns, write_scores


def _data(n: int = 50, d: int = 8, c: int = 4, dtype: type = np.float16) -> dict:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, d)).astype(dtype)
    p = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    return {
        "sample_ids": [f"id{i}" for i in range(n)],
        "embeddings": emb,
        "probs": p,
        "scores": {
            "u_badge": rng.random(n).astype(np.float32),
            "u_entropy": rng.random(n).astype(np.float32),
        },
        "confident": rng.random(n) < 0.5,
        "pred": p.argmax(1),
    }


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("num_parts", [1, 3])
@pytest.mark.parametrize("pack", [False, True])
def test_round_trip(tmp_path, dtype: type, num_parts: int, pack: bool) -> None:
    data = _data(dtype=dtype)
    path = str(tmp_path / ("scores.parquet" if num_parts == 1 else "scores"))
    write_scores(path, **data, num_parts=num_parts, row_group_size=7, pack_embeddings=pack)
    field = pq.read_schema(path if num_parts == 1 else sorted((tmp_path / "scores").iterdir())[0]).field(
        "embedding"
    )
    assert pa.types.is_fixed_size_binary(field.type) == pack
    pool = load_pool(path, batch_size=11)
    assert pool.ids.tolist() == data["sample_ids"]
    assert pool.embeddings.dtype == dtype and pool.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(pool.embeddings, data["embeddings"])
    np.testing.assert_array_equal(pool.probs, data["probs"])
    np.testing.assert_array_equal(pool.scores["u_badge"], data["scores"]["u_badge"])
    np.testing.assert_array_equal(pool.confident, data["confident"])
    np.testing.assert_array_equal(pool.pred, data["pred"])


def test_column_selection_and_missing_columns(tmp_path) -> None:
    path = str(tmp_path / "s.parquet")
    write_scores(path, **_data())
    pool = load_pool(path, columns=["u_badge"])
    assert pool.embeddings is None and pool.probs is None and list(pool.scores) == ["u_badge"]
    with pytest.raises(DataError, match="lacks columns \\['u_margin'\\]"):
        load_pool(path, columns=["u_margin"])
    with pytest.raises(DataError, match="cannot read"):
        load_pool(str(tmp_path / "nope.parquet"))


def test_fixed_size_list_and_ray_style_directory(tmp_path) -> None:
    n, d = 20, 6
    emb = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    (tmp_path / "out").mkdir()
    for i, sl in enumerate((slice(0, 8), slice(8, 20))):
        t = pa.table(
            {
                "sample_id": pa.array([f"x{j}" for j in range(n)][sl]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb[sl].reshape(-1)), d),
            }
        )
        pq.write_table(t, tmp_path / "out" / f"{i}_000000.parquet")
    pool = load_pool(str(tmp_path / "out"))
    np.testing.assert_array_equal(pool.embeddings, emb)
    assert pool.ids[-1] == "x19"


def test_nan_rows_are_rejected_with_ids(tmp_path) -> None:
    data = _data()
    data["embeddings"][[3, 7]] = np.inf
    data["scores"]["u_badge"][5] = np.nan
    path = str(tmp_path / "bad.parquet")
    write_scores(path, **data)
    with pytest.raises(DataError, match=r"'embedding'.*2 rows.*id3.*id7"):
        load_pool(path)
    with pytest.raises(DataError, match=r"'u_badge'.*id5"):
        load_pool(path, columns=["u_badge"])


def test_ragged_null_and_duplicate_rows(tmp_path) -> None:
    ragged = pa.table({"sample_id": ["a", "b"], "embedding": pa.array([[1.0, 2.0], [1.0]])})
    pq.write_table(ragged, tmp_path / "r.parquet")
    with pytest.raises(DataError, match="different lengths.*'b'"):
        load_pool(str(tmp_path / "r.parquet"))
    nulls = pa.table({"sample_id": ["a", "b"], "embedding": pa.array([[1.0], None])})
    pq.write_table(nulls, tmp_path / "n.parquet")
    with pytest.raises(DataError, match="null for sample_ids \\['b'\\]"):
        load_pool(str(tmp_path / "n.parquet"))
    dup = pa.table({"sample_id": ["a", "a", "c"], "u_badge": [0.1, 0.2, 0.3]})
    pq.write_table(dup, tmp_path / "d.parquet")
    with pytest.raises(DataError, match="duplicate sample_ids: \\['a'\\]"):
        load_pool(str(tmp_path / "d.parquet"))
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "noid.parquet")
    with pytest.raises(DataError, match="no 'sample_id'"):
        load_pool(str(tmp_path / "noid.parquet"))


def test_id_lists_and_exclude_mask(tmp_path) -> None:
    (tmp_path / "l.csv").write_text("sample_id,label\n002,x\nid1,y\n")
    pq.write_table(pa.table({"sample_id": ["id1", "id9"], "label": [0, 1]}), tmp_path / "l.parquet")
    assert read_id_list(str(tmp_path / "l.csv")).tolist() == ["002", "id1"]
    assert read_id_list(str(tmp_path / "l.parquet")).tolist() == ["id1", "id9"]
    ids = np.array(["id0", "id1", "002"], dtype=object)
    assert exclude_mask(ids, read_id_list(str(tmp_path / "l.csv"))).tolist() == [False, True, True]
    with pytest.raises(DataError, match="does not exist"):
        read_id_list(str(tmp_path / "missing.csv"))


def test_scores_columns_and_empty_directory(tmp_path) -> None:
    path = str(tmp_path / "s.parquet")
    write_scores(path, **_data())
    assert scores_columns(path) == [
        "sample_id",
        "embedding",
        "probs",
        "u_badge",
        "u_entropy",
        "confident",
        "pred",
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".part.tmp").write_bytes(b"partial")
    with pytest.raises(DataError, match="no Parquet files"):
        load_pool(str(tmp_path / "empty"))


def test_parts_are_opened_one_at_a_time(tmp_path, monkeypatch) -> None:
    """A Ray Data output directory holds thousands of parts: never all of them open at once."""
    import contextlib

    from hssal_ray.query import scores_io

    data = _data(n=40)
    path = str(tmp_path / "many")
    write_scores(path, **data, num_parts=8)
    real = scores_io._open_part
    live, most = [0], [0]

    @contextlib.contextmanager
    def counting(*args, **kwargs):
        with real(*args, **kwargs) as pf:
            live[0] += 1
            most[0] = max(most[0], live[0])
            try:
                yield pf
            finally:
                live[0] -= 1

    monkeypatch.setattr(scores_io, "_open_part", counting)
    pool = load_pool(path, batch_size=3)
    assert most[0] == 1 and live[0] == 0
    assert pool.ids.dtype == object and pool.ids.tolist() == data["sample_ids"]
    assert all(type(s) is str for s in pool.ids)
    np.testing.assert_array_equal(pool.embeddings, data["embeddings"])
    assert scores_columns(path)[0] == "sample_id"


def test_duplicate_and_null_ids_across_parts(tmp_path) -> None:
    d = tmp_path / "dups"
    d.mkdir()
    pq.write_table(pa.table({"sample_id": ["a", "b", "c"], "u_badge": [0.1, 0.2, 0.3]}), d / "0.parquet")
    pq.write_table(pa.table({"sample_id": ["d", "b", "a"], "u_badge": [0.1, 0.2, 0.3]}), d / "1.parquet")
    with pytest.raises(DataError, match="duplicate sample_ids: \\['a', 'b'\\]"):
        load_pool(str(d))
    n = tmp_path / "nulls"
    n.mkdir()
    pq.write_table(pa.table({"sample_id": ["a", "b"], "u_badge": [0.1, 0.2]}), n / "0.parquet")
    pq.write_table(
        pa.table({"sample_id": pa.array([None, "c"], pa.string()), "u_badge": [0.1, 0.2]}), n / "1.parquet"
    )
    with pytest.raises(DataError, match="1 null sample_ids"):
        load_pool(str(n))
    with pytest.raises(DataError, match="lacks columns \\['u_margin'\\]"):
        load_pool(str(n), columns=["u_margin"])


def test_a_part_without_a_column_is_named(tmp_path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(pa.table({"sample_id": ["a"], "u_badge": [0.1]}), d / "0.parquet")
    pq.write_table(pa.table({"sample_id": ["b"]}), d / "1.parquet")
    with pytest.raises(DataError, match="lacks columns \\['u_badge'\\]"):
        load_pool(str(d))
    assert load_pool(str(d), columns=[]).ids.tolist() == ["a", "b"]


def test_read_id_list_is_an_object_array(tmp_path) -> None:
    (tmp_path / "e.csv").write_text("sample_id\n")
    empty = read_id_list(str(tmp_path / "e.csv"))
    assert empty.dtype == object and empty.shape == (0,)
    pq.write_table(pa.table({"sample_id": pa.chunked_array([["b"], ["a", "c"]])}), tmp_path / "c.parquet")
    ids = read_id_list(str(tmp_path / "c.parquet"))
    assert ids.dtype == object and ids.tolist() == ["b", "a", "c"] and all(type(s) is str for s in ids)


def test_has_duplicates_survives_hash_collisions(monkeypatch) -> None:
    from hssal_ray.query import scores_io

    ids = np.array([f"id{i}" for i in range(100)], dtype=object)
    assert not scores_io._has_duplicates(ids) and not scores_io._has_duplicates(ids[:1])
    assert scores_io._has_duplicates(np.append(ids, "id42"))
    # every id hashing alike: the exact check decides
    monkeypatch.setattr(scores_io, "hash", lambda s: 7, raising=False)
    assert not scores_io._has_duplicates(ids)
    assert scores_io._has_duplicates(np.append(ids, "id0"))


def test_packed_embeddings_equal_the_list_column_and_bad_packing_is_named(tmp_path) -> None:
    data = _data(n=40, d=12)
    write_scores(str(tmp_path / "list.parquet"), **data)
    write_scores(str(tmp_path / "packed.parquet"), **data, pack_embeddings=True)
    a, b = (
        load_pool(str(tmp_path / "list.parquet")),
        load_pool(str(tmp_path / "packed.parquet"), batch_size=9),
    )
    assert a.embeddings.dtype == b.embeddings.dtype == np.float16
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(6), 2, [None, pa.py_buffer(b"\0" * 12)])
    pq.write_table(pa.table({"sample_id": ["a", "b"], "embedding": raw}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="fixed_size_binary without a float16/float32"):
        load_pool(str(tmp_path / "bad.parquet"))
    odd = pa.field("embedding", pa.binary(3), metadata={"hssal.dtype": "float16"})
    raw3 = pa.FixedSizeBinaryArray.from_buffers(pa.binary(3), 2, [None, pa.py_buffer(b"\0" * 6)])
    t = pa.table([pa.array(["a", "b"]), raw3], schema=pa.schema([pa.field("sample_id", pa.string()), odd]))
    pq.write_table(t, tmp_path / "odd.parquet")
    with pytest.raises(DataError, match="whole float16"):
        load_pool(str(tmp_path / "odd.parquet"))
