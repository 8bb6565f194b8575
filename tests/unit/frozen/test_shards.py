"""The sharded neighbour search's math: per-shard top-k lists merged = the exact single-machine graph."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.errors import ConfigError
from hssal_ray.frozen.knn_torch import knn_cosine
from hssal_ray.frozen.shards import block_topk, gpus_per_shard, merge_topk, shard_bounds


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shard_bounds_cover_every_row_once() -> None:
    for n, s in [(10, 3), (7, 7), (3, 5), (1000, 4), (0, 2)]:
        b = shard_bounds(n, s)
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(a[1] == c[0] for a, c in zip(b[:-1], b[1:], strict=True))
        sizes = [e - s for s, e in b]
        assert max(sizes) - min(sizes) <= 1 and (n == 0 or min(sizes) >= 1)
    with pytest.raises(ValueError):
        shard_bounds(5, 0)


@pytest.mark.parametrize("shards", [2, 3, 5])
def test_merged_shard_topk_equals_exact_search(shards: int) -> None:
    z = _unit(503, 24)
    k = 7
    ref_cos, ref_idx = knn_cosine(z, k)
    cos = np.empty_like(ref_cos)
    idx = np.empty_like(ref_idx)
    bounds = shard_bounds(len(z), shards)
    for qs, qe in bounds:
        parts = [block_topk(z[qs:qe], qs, z[xs:xe], xs, k) for xs, xe in bounds]
        cos[qs:qe], idx[qs:qe] = merge_topk(parts, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-6)
    assert not (idx == np.arange(len(z))[:, None]).any()  # never a node's own neighbour


def test_small_shards_are_padded_and_padding_ranks_last() -> None:
    z = _unit(6, 4, seed=1)
    c, i = block_topk(z[:1], 0, z[:2], 0, 5)  # a shard of 2 nodes, one of them the query itself
    assert c.shape == (1, 2) and i[0, 1] == -1 and np.isneginf(c[0, 1]) and i[0, 0] == 1
    parts = [(c, i), block_topk(z[:1], 0, z[2:], 2, 5)]
    mc, mi = merge_topk(parts, 5)
    ref_c, ref_i = knn_cosine(z, 5)
    np.testing.assert_array_equal(mi, ref_i[:1])
    np.testing.assert_allclose(mc, ref_c[:1], atol=1e-6)


def test_merge_breaks_ties_by_node_index() -> None:
    cos = np.array([[0.5, 0.5]], np.float32)
    mc, mi = merge_topk([(cos[:, :1], np.array([[9]])), (cos[:, 1:], np.array([[4]]))], 2)
    assert mi.tolist() == [[4, 9]] and mc.tolist() == [[0.5, 0.5]]


def test_a_shard_held_as_a_tensor_on_a_device_gives_the_same_lists() -> None:
    import torch

    z = _unit(300, 16, seed=2)
    ref = block_topk(z[:50], 0, z[100:], 100, 5)
    for x, device in [(torch.from_numpy(z[100:]), "cpu"), (z[100:], torch.device("cpu"))]:
        got = block_topk(z[:50], 0, x, 100, 5, device=device)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
    if torch.cuda.is_available():  # the GPU machine: float32 on CUDA, TF32 off
        on_gpu = torch.from_numpy(z[100:]).cuda()
        c, i = block_topk(z[:50], 0, on_gpu, 100, 5, device="cuda")
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_allclose(c, ref[0], rtol=0, atol=1e-6)


def test_gpus_per_shard() -> None:
    assert gpus_per_shard(8, 4) == 1.0  # one GPU each while there are enough
    assert gpus_per_shard(2, 8) == 0.25  # else an equal share, every shard placed at once
    assert gpus_per_shard(2, 3) == 0.6666  # rounded down to Ray's 1e-4 granularity
    assert gpus_per_shard(1, 3) * 3 <= 1
    with pytest.raises(ConfigError, match="has no GPU"):
        gpus_per_shard(0, 2)


def test_a_gpu_shard_without_cuda_says_so(tmp_path) -> None:
    import torch

    from hssal_ray.config import load_config
    from hssal_ray.frozen.head import graph_features
    from hssal_ray.frozen.sharded import StoreShard
    from hssal_ray.frozen.split_cache import run_stats
    from hssal_ray.frozen.store import open_store, view_names, write_arrays

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the message is for one without")
    cfg = load_config(None, ["ssl.finetune=frozen", "frozen.embed_views=1", "frozen.tta_views=1"])
    rng = np.random.default_rng(0)
    views = view_names(1)
    blocks = {v: rng.standard_normal((40, 8)).astype(np.float16) for v in views}
    meta = {"key": "gpu-shard-test", "views": list(views), "rows": 40, "complete": True}
    write_arrays(str(tmp_path / "emb"), [f"img{i:03d}" for i in range(40)], [blocks], views, meta=meta)
    rows = np.arange(20, dtype=np.int64)
    stats = run_stats(cfg, open_store(str(tmp_path / "emb")), rows)
    shard = StoreShard(str(tmp_path / "emb"), cfg, (rows, 0, stats))
    assert len(shard.z) == 20 and shard.device is None
    with pytest.raises(RuntimeError, match="torch sees no CUDA"):
        StoreShard(str(tmp_path / "emb"), cfg, (rows, 0, stats, True))
    ref = graph_features(cfg, shard.store.views, rows, stats)(np.arange(20))
    np.testing.assert_array_equal(shard.features(), ref)
