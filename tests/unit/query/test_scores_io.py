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
def test_round_trip(tmp_path, dtype: type, num_parts: int) -> None:
    data = _data(dtype=dtype)
    path = str(tmp_path / ("scores.parquet" if num_parts == 1 else "scores"))
    write_scores(path, **data, num_parts=num_parts, row_group_size=7)
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
