"""Sections on search: torch k-means and HAL's select, the cuML backend's cupy hand-off, the k-NN graph."""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from typing import Any

import numpy as np

from benchmarks._gpu.run import Run, _free, guarded
from benchmarks._gpu.sizes import _r

log = logging.getLogger("benchmarks.gpu_check")


def _clustered(n: int, d: int, centres: int, device: Any, seed: int, dtype: Any = None) -> Any:
    """``(n, d)`` unit rows around ``centres`` random unit centres, generated on ``device`` in blocks."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float16
    g = torch.Generator(device=device).manual_seed(seed)
    c = F.normalize(torch.randn(centres, d, generator=g, device=device), dim=1)
    out = torch.empty((n, d), dtype=dtype, device=device)
    step = 1 << 19
    for s in range(0, n, step):
        m = min(step, n - s)
        lab = torch.randint(0, centres, (m,), generator=g, device=device)
        x = c[lab] + torch.randn(m, d, generator=g, device=device) / math.sqrt(d)
        out[s : s + m] = F.normalize(x, dim=1).to(dtype)
    return out


def sec_kmeans(run: Run) -> dict[str, Any]:
    """Torch k-means on GPU (device- and host-resident rows) and CPU; HAL on CUDA; the cupy hand-off."""
    import torch

    from hssal_ray.query import HierarchicalQuery, Pool
    from hssal_ray.query.backends import assign_chunked, make_kmeans

    s = run.sizes
    rows: list[dict[str, Any]] = []

    def fit(x: Any, device: str | None) -> dict[str, Any]:
        run.reset_peak()
        base = torch.cuda.memory_allocated() if run.cuda else 0
        t = time.perf_counter()
        km = make_kmeans(
            "torch", n_clusters=s.kmeans_k, max_iter=s.kmeans_iters, random_state=0, tol=0.0, device=device
        ).fit(x)
        run.sync()
        dt = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() - base if run.cuda else None
        return {
            "fit_s": _r(dt, 3),
            "n_iter": int(km.n_iter_),
            "s_per_pass": _r(dt / (km.n_iter_ + 1), 4),
            "inertia": _r(km.inertia_, 1),
            "peak_gpu_mem_gib_over_data": None if peak is None else _r(peak / 2**30, 3),
            "centres": km.cluster_centers_,
        }

    for n in s.kmeans_n:

        def one(n: int = n) -> dict[str, Any]:
            out: dict[str, Any] = {}
            x = _clustered(n, s.kmeans_d, s.centres, run.dev, seed=n)
            run.sync()
            out["data_gib"] = _r(x.numel() * x.element_size() / 2**30, 3)
            make_kmeans("torch", n_clusters=s.kmeans_k, max_iter=1, random_state=0).fit(x[: 20 * s.kmeans_k])
            r = fit(x, None)  # after a small warm-up fit (kernel selection, allocator)
            centres = r.pop("centres")
            out["device"] = {"where": str(run.dev), **r}
            t = time.perf_counter()
            assign_chunked(x, centres)
            run.sync()
            out["assign_pass_s"] = _r(time.perf_counter() - t, 3)
            # HAL's select on CUDA-resident embeddings (coarse k-means and assignment on the device)
            u = np.random.default_rng(n).random(n).astype(np.float32)
            pool = Pool(ids=np.arange(n), embeddings=x, scores={"u_badge": u})
            strat = HierarchicalQuery(kmeans_backend="torch", random_state=0)
            t = time.perf_counter()
            picks = strat.select(pool, s.hal_budget)
            out["hal_select_s"] = _r(time.perf_counter() - t, 3)
            info = strat.info_
            out["hal_info"] = {
                "coarse_k": int(info["coarse_k"]),
                "backend": info["backend"],
                "n_candidates": int(info["n_candidates"]),
                "seconds": {k: _r(v, 3) for k, v in info["seconds"].items()},
            }
            out["hal_picks"] = len(np.unique(picks))
            if n <= s.kmeans_cpu_max_n:
                xc = x.cpu()
                del pool, x
                _free()
                cpu = fit(xc, None)
                cpu.pop("centres")
                out["cpu"] = {"where": "cpu", "threads": torch.get_num_threads(), **cpu}
                if run.cuda:
                    host = fit(xc, "cuda")
                    host.pop("centres")
                    out["host_to_device"] = {"where": "host data, device=cuda (streamed per block)", **host}
                out["gpu_speedup_vs_cpu"] = _r(out["cpu"]["fit_s"] / out["device"]["fit_s"], 2)
            return out

        row = {"n": n, "d": s.kmeans_d}
        row.update(guarded(one))
        rows.append(row)
        log.info("kmeans n=%d: %s", n, row.get("device", row.get("status")))
        _free()
    return {
        "settings": {
            "backend": "torch (hssal_ray.query.backends.TorchKMeans) via make_kmeans",
            "k": s.kmeans_k,
            "max_iter": s.kmeans_iters,
            "tol": 0.0,
            "init": "k-means++ on init_size = max(2000, 20 k) rows",
            "chunk_size": 2048,
            "dtype": f"float16 rows (unit norm, clustered around {s.centres} centres), float32 blocks inside",
            "hal": f"HierarchicalQuery(kmeans_backend='torch').select(budget={s.hal_budget}), u_badge random",
            "cpu_backend_note": "faiss is not installed on the GPU machine: its CPU backend is torch",
        },
        "rows": rows,
        "cupy_handoff": guarded(lambda: _cupy_handoff(run)),
        "cuml_installed": importlib.util.find_spec("cuml") is not None,
    }


def _cupy_handoff(run: Run) -> dict[str, Any]:
    """``CumlKMeans._to_cupy``: fp16 CUDA tensors become float32 cupy arrays; float32 ones are shared."""
    import torch

    from hssal_ray.query.backends import CumlKMeans

    if not run.cuda:
        return {"skipped": "no CUDA device"}
    if importlib.util.find_spec("cupy") is None:
        return {"skipped": "cupy is not installed"}
    import cupy

    x16 = _clustered(8192, 64, 8, run.dev, seed=1)
    a = CumlKMeans._to_cupy(cupy, x16)
    x32 = x16.float().contiguous()
    b = CumlKMeans._to_cupy(cupy, x32)
    c = CumlKMeans._to_cupy(cupy, x16.cpu().numpy())
    same = bool(cupy.allclose(a, b)) and bool(cupy.allclose(b, c))
    return {
        "fp16_cuda_to": str(a.dtype),
        "float32_zero_copy": int(b.data.ptr) == int(x32.data_ptr()),
        "numpy_to": f"{c.dtype} on device {c.device.id}",
        "device_matches_torch": int(a.device.id) == torch.cuda.current_device(),
        "values_equal": same,
        "cupy_pool_used_mib": _r(cupy.get_default_memory_pool().used_bytes() / 2**20, 2),
        "cupy_version": cupy.__version__,
    }


def sec_knn(run: Run) -> dict[str, Any]:
    """The k-NN graph of ``knn_n`` x ``knn_d`` fp16 nodes: seconds, peak memory, recall, affinity."""
    import torch
    import torch.nn.functional as F

    from hssal_ray.frozen.knn_torch import affinity_from_neighbours, knn_cosine

    s = run.sizes
    k = run.frozen_cfg().frozen.graph_k
    x = _clustered(s.knn_n, s.knn_d, s.centres, run.dev, seed=7)
    dtype = torch.float16  # the GPU arithmetic, also in the CPU twin
    knn_cosine(x[:4096], k, device=run.dev, compute_dtype=dtype)  # warm-up
    run.reset_peak()
    base = torch.cuda.memory_allocated() if run.cuda else 0
    t = time.perf_counter()
    cos, idx = knn_cosine(x, k, device=run.dev, compute_dtype=dtype)
    run.sync()
    knn_s = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if run.cuda else None

    # recall against an exact float32 search of the same rows (queries vs every row, keys in blocks)
    q = np.sort(
        np.random.default_rng(0).choice(s.knn_n, size=min(s.knn_check_queries, s.knn_n), replace=False)
    )
    qt = torch.from_numpy(q).to(run.dev)
    xq = F.normalize(x[qt].float(), dim=1)
    best_v = torch.full((len(q), k), -float("inf"), device=run.dev)
    best_i = torch.zeros((len(q), k), dtype=torch.int64, device=run.dev)
    from hssal_ray.frozen.shards import exact_float32

    with exact_float32(run.dev):
        step = 1 << 17
        for s0 in range(0, s.knn_n, step):
            keys = F.normalize(x[s0 : s0 + step].float(), dim=1)
            sims = xq @ keys.T
            own = (qt >= s0) & (qt < s0 + keys.shape[0])
            sims[own.nonzero().flatten(), (qt[own] - s0)] = -float("inf")
            bv, bi = torch.topk(sims, min(k, keys.shape[0]), dim=1)
            v, i = torch.topk(torch.cat([best_v, bv], 1), k, dim=1)
            best_i = torch.gather(torch.cat([best_i, bi + s0], 1), 1, i)
            best_v = v
            del sims
    exact_i, exact_v = best_i.cpu().numpy(), best_v.cpu().numpy()
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx[q], exact_i, strict=True)]))
    kth_gap = float(np.max(exact_v[:, -1] - cos[q, -1]))
    t = time.perf_counter()
    S = affinity_from_neighbours(cos, idx)
    aff_s = time.perf_counter() - t
    shard = _shard_search(run, x, k)
    return {
        "settings": {
            "n": s.knn_n,
            "d": s.knn_d,
            "k": k,
            "input": f"float16 unit rows clustered around {s.centres} centres, on {run.dev}",
            "function": "hssal_ray.frozen.knn_torch.knn_cosine "
            "(float16 tiles, top k + 8 re-scored in float32)",
            "recall_check": f"{len(q)} random queries against an exact float32 search (TF32 off)",
        },
        "knn_s": _r(knn_s, 3),
        "peak_gpu_mem_gib_over_data": None if peak is None else _r(peak, 3),
        "recall_at_k": _r(recall, 5),
        "max_kth_cos_shortfall": _r(kth_gap, 6),
        "affinity_s": _r(aff_s, 3),
        "affinity_nnz": int(S.nnz),
        "shard_search": shard,
    }


def _shard_search(run: Run, x: Any, k: int) -> dict[str, Any]:
    """The sharded graph's search on the device (``resources.use_gpu`` with ``store_shards``).

    :func:`hssal_ray.frozen.shards.block_topk` as a GPU shard actor runs it: the shard's rows kept
    on the device in float32, a block of query nodes from the host, float32 products with TF32 off.
    Timed on ``nq`` queries against all ``n`` rows as one shard (the whole exact graph on one GPU
    is ``n / nq`` times that); the lists compared with the CPU's on a slice.
    """
    import torch

    from hssal_ray.frozen.shards import block_topk

    n = x.shape[0]
    xs = x.float()
    nq = min(n, 16384)
    qn = xs[:nq].cpu().numpy()
    block_topk(qn[:256], 0, xs, 0, k, device=run.dev)  # warm-up
    run.sync()
    t = time.perf_counter()
    block_topk(qn, 0, xs, 0, k, device=run.dev)
    run.sync()
    search_s = time.perf_counter() - t
    m, keys = min(256, nq), min(n, 100_000)
    cpu_c, cpu_i = block_topk(qn[:m], 0, xs[:keys].cpu().numpy(), 0, k)
    dev_c, dev_i = block_topk(qn[:m], 0, xs[:keys], 0, k, device=run.dev)
    del xs
    if run.cuda:
        torch.cuda.empty_cache()
    return {
        "function": "hssal_ray.frozen.shards.block_topk (float32 on the device, TF32 off)",
        "queries": nq,
        "rows": n,
        "search_s": _r(search_s, 3),
        "whole_graph_s_one_device": _r(search_s * n / nq, 3),
        "cpu_check": f"{m} queries x {keys} rows",
        "same_index_share": _r(float(np.mean(cpu_i == dev_i)), 5),
        "max_cos_diff": _r(float(np.max(np.abs(cpu_c - dev_c))), 7),
    }
