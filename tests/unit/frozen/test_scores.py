"""The frozen path's scores file, written block by block: the same contract and values as in one piece."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from hssal_ray.config import load_config
from hssal_ray.frozen import scores as frozen_scores
from hssal_ray.frozen.head import build_head, head_predict, predict_views
from hssal_ray.frozen.store import EmbeddingStore, view_names
from hssal_ray.learners.frozen import FrozenLearner
from hssal_ray.query import load_pool
from hssal_ray.query.scores_table import ScoresWriter, scores_arrow_table
from hssal_ray.rounds import scores_strong_view, scores_table
from hssal_ray.state import round_dir


@pytest.mark.parametrize("query", [[], ["query.ssl_aware=true"]])
def test_streamed_scores_equal_the_whole_pool_table(tmp_path: Path, monkeypatch, query: list[str]) -> None:
    cfg = load_config(None, ["ssl.finetune=frozen", "frozen.embed_views=2", "frozen.tta_views=2", *query])
    strong = scores_strong_view(cfg)  # scored only when the query reads it, as on the image path
    rng = np.random.default_rng(0)
    n, d, nc = 50, 12, 3
    views = {v: rng.normal(size=(n, d)).astype(np.float16) for v in view_names(2)}
    missing = np.zeros(n, bool)
    missing[[4, 31]] = True
    ids = [f"img{i:03d}" for i in range(n)]
    store = EmbeddingStore(path=str(tmp_path / "emb"), ids=ids, views=views, missing=missing)
    torch.manual_seed(0)
    head = build_head(cfg, d, nc, stats=(torch.zeros(d), torch.ones(d)))
    ckpt = Path(round_dir(str(tmp_path), 1)) / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / "ema.safetensors"))
    scored = pa.table({"sample_id": pa.array(ids[::-1])})  # the order of the table does not matter
    run = types.SimpleNamespace(
        cfg=cfg,
        run_dir=str(tmp_path),
        catalog=types.SimpleNamespace(class_names=["a", "b", "c"]),
        scored_rows=lambda *_: scored,
    )
    monkeypatch.setattr(frozen_scores, "SCORE_BLOCK_ROWS", 7)  # 48 rows -> 7 blocks
    out = tmp_path / "round_001" / "scores.parquet"
    FrozenLearner(run, store=store).score(1, str(out))
    assert pq.ParquetFile(out).metadata.num_row_groups == 7
    # the table as it was built before streaming: every row at once
    rows = store.rows_of(scored.column("sample_id"))
    rows = rows[~missing[rows]]
    head.eval()
    f = views["none"][rows].astype(np.float32)
    emb = f / np.linalg.norm(f, axis=1, keepdims=True)
    want = scores_table(
        store.ids[rows],
        emb,
        predict_views(head, views, rows, 2),
        head_predict(head, views["strong_0"][rows]) if strong else None,
        0.95,
    )
    got = pq.read_table(out)
    assert got.column_names == want.column_names
    assert ("confident" in got.column_names) == ("u_disagreement" in got.column_names) == bool(query)
    assert pa.types.is_fixed_size_binary(got.schema.field("embedding").type)  # packed float16 rows
    assert got.column("sample_id").to_pylist() == want.column("sample_id").to_pylist()
    for c in want.column_names[2:]:
        assert got.schema.field(c).type == want.schema.field(c).type
        a, b = got.column(c).to_pylist(), want.column(c).to_pylist()
        np.testing.assert_allclose(
            np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=1e-5
        )
    pool = load_pool(str(out))  # the query stage reads it
    assert len(pool.ids) == 48 and pool.embeddings.dtype == np.float16
    want_emb = np.asarray(want.column("embedding").to_pylist(), dtype=np.float16)
    np.testing.assert_allclose(pool.embeddings.astype(np.float32), want_emb.astype(np.float32), atol=1e-3)


def test_scores_writer_is_atomic_and_checks_blocks(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    a = scores_arrow_table(
        ["x", "y"], np.ones((2, 3), np.float16), np.full((2, 2), 0.5), {"u_entropy": [0.1, 0.2]}
    )
    with ScoresWriter(str(path), row_group_size=1) as w:
        w.write(a)
        w.write(a.slice(0, 1))
    assert pq.read_table(path).num_rows == 3 and pq.ParquetFile(path).metadata.num_row_groups == 3
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), ScoresWriter(str(path)) as w:
        w.write(a)
        raise RuntimeError("boom")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="schema"), ScoresWriter(str(path)) as w:
        w.write(a)
        w.write(a.drop_columns(["u_entropy"]))
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_query_embeddings_from_the_store_are_the_scores_files_values(tmp_path: Path) -> None:
    """The loop's query reads the store (:class:`StoreUnitRows`), not the scores file's embedding
    column: the same float16 values bit for bit, for whole reads, gathers of any size and streamed
    blocks, from a file-backed store (read with ``pread``) with rows in the scores file's order."""
    from hssal_ray.frozen.query_rows import StoreUnitRows
    from hssal_ray.frozen.rows import file_backed
    from hssal_ray.frozen.store import open_store, write_arrays
    from hssal_ray.query.kmeans_ops import assign_chunked

    cfg = load_config(None, ["ssl.finetune=frozen", "frozen.embed_views=1", "frozen.tta_views=1"])
    rng = np.random.default_rng(5)
    n, d, nc = 3000, 40, 4
    names = view_names(1)
    feats = {
        v: (rng.normal(size=(n, d)) * rng.uniform(0.1, 30, size=(n, 1))).astype(np.float16) for v in names
    }
    feats["none"][7] = 0.0  # a zero row: its norm is clamped the same way on both paths
    ids = [f"img{i:05d}" for i in range(n)]
    path = str(tmp_path / "store")
    write_arrays(path, ids, [feats], names, meta={"key": "k", "complete": True, "rows": n})
    store = open_store(path, names, n)
    assert file_backed(store.views["none"])
    torch.manual_seed(0)
    head = build_head(cfg, d, nc, stats=(torch.zeros(d), torch.ones(d)))
    ckpt = Path(round_dir(str(tmp_path), 1)) / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ckpt / "ema.safetensors"))
    order = rng.permutation(n)[: n - 100]  # scored rows in another order than the store's
    scored = pa.table({"sample_id": pa.array([ids[i] for i in order])})
    run = types.SimpleNamespace(
        cfg=cfg,
        run_dir=str(tmp_path),
        catalog=types.SimpleNamespace(class_names=["a", "b", "c", "d"]),
        scored_rows=lambda *_: scored,
    )
    learner = FrozenLearner(run, store=store)
    out = str(tmp_path / "scores.parquet")
    learner.score(1, out)
    pool = load_pool(out)
    src = learner.query_embeddings(pool.ids)
    assert isinstance(src, StoreUnitRows) and src.shape == pool.embeddings.shape
    want = pool.embeddings.view(np.uint16)
    assert np.array_equal(np.asarray(src).view(np.uint16), want)
    for size in (1, 5, 1023, 1025, 2500):
        idx = rng.choice(len(pool), size, replace=False)
        assert np.array_equal(src[idx].view(np.uint16), want[idx]), size
    C = pool.embeddings[rng.choice(len(pool), 6)].astype(np.float32)
    la, da = assign_chunked(pool.embeddings, C, chunk_size=700, return_distances=True)
    lb, db = assign_chunked(src, C, chunk_size=700, return_distances=True)
    assert np.array_equal(la, lb) and np.array_equal(da, db)
    lazy = load_pool(out, skip=["embedding"])
    assert lazy.embeddings is None and np.array_equal(lazy.probs, pool.probs)


def test_the_cold_start_features_are_read_by_row_with_normalize_s_values(tmp_path: Path) -> None:
    """``feature_pool`` (round 0's TypiClust) reads rows when indexed, with the values
    ``torch.nn.functional.normalize`` gives (what it computed when it built the whole matrix),
    which differ from the scores file's arithmetic in the last bit of a few rows."""
    from hssal_ray.frozen.query_rows import StoreUnitRows
    from hssal_ray.frozen.store import open_store, write_arrays

    cfg = load_config(None, ["ssl.finetune=frozen", "frozen.embed_views=1"])
    rng = np.random.default_rng(9)
    n, d = 2000, 48
    names = view_names(1)
    feats = {
        v: (rng.normal(size=(n, d)) * rng.uniform(0.1, 30, size=(n, 1))).astype(np.float16) for v in names
    }
    ids = [f"img{i:05d}" for i in range(n)]
    path = str(tmp_path / "store")
    write_arrays(path, ids, [feats], names, meta={"key": "k", "complete": True, "rows": n})
    store = open_store(path, names, n)
    run = types.SimpleNamespace(cfg=cfg, run_dir=str(tmp_path))
    table = pa.table({"sample_id": pa.array([ids[i] for i in rng.permutation(n)[:1500]])})
    pool = FrozenLearner(run, store=store).feature_pool(table)
    assert isinstance(pool.embeddings, StoreUnitRows) and pool.embeddings.arithmetic == "normalize"
    rows = store.rows_of(table.column("sample_id"))
    x = torch.from_numpy(feats["none"][rows].astype(np.float32))
    want = torch.nn.functional.normalize(x, dim=1, eps=1e-12).half().numpy()
    assert np.array_equal(np.asarray(pool.embeddings).view(np.uint16), want.view(np.uint16))
    idx = rng.choice(1500, 300)
    assert np.array_equal(pool.embeddings[idx].view(np.uint16), want[idx].view(np.uint16))
    assert list(pool.ids) == [ids[r] for r in rows]
