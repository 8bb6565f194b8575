"""faiss's bundled OpenBLAS on its own kernels and on the ones the product loads (``hssal_ray._faiss``).

``python -m benchmarks.faiss_blas --n 200000`` (``--smoke``: a tiny pool, in a test)

faiss-cpu's wheel ships OpenBLAS 0.3.15, which runs its generic Prescott kernels on CPUs it does not
know (every Xeon since Ice Lake); :func:`hssal_ray._faiss.import_faiss` loads it with the CPU's own
kernels instead. On one synthetic pool of the frozen path's shape (``benchmarks.cold_start_scale``'s
generator: d=1280, unit rows, 21 classes), each setting in its own single-threaded process (the
kernels are picked when the library loads), the product's steps that run faiss:

* ``cold_start``: :class:`hssal_ray.query.TypiClustQuery` picking ``--fraction`` of the pool (round
  0's TypiClust cold start: faiss k-means on a sample, then one assignment pass);
* ``graph``: :func:`hssal_ray.frozen.knn_search.ivf_knn`, the k-NN graph's IVF build above 50k rows
  (faiss PCA + k-means lists + one search of every row against the lists; the lists are searched by
  torch);
* ``hal_coarse``: the k-means of HAL's coarse level for a ``--batch`` query (``make_kmeans("auto")``,
  ``auto_coarse_k`` clusters, at most 64, fitted on 256 rows a cluster, as ``query.hierarchical`` does).

Reported: CPU seconds per step and setting, the ratio, and whether the two settings give the same
result (the same picks, the same neighbour lists, the same cluster labels), since a kernel with
other rounding may decide a near-tie the other way, and the synthetic classes the cold start covers.
Writes ``<out>/faiss_blas.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import REPO, md_table, setup_logging, write_result
from benchmarks.frozen_scale import THREAD_ENV

__all__ = ["main", "measure"]

log = logging.getLogger("benchmarks")
MODULE = "benchmarks.faiss_blas"
SETTINGS = {"library": {"HSSAL_FAISS_CORETYPE": "library"}, "product": {}}
"""Child environment per setting: the library's own kernels, and the product's default."""


def measure(n: int, dim: int, fraction: float, batch: int, seed: int = 0) -> dict[str, Any]:
    """The three steps in this process, one thread: CPU seconds and a digest of each result."""
    import hashlib

    import torch

    from benchmarks.cold_start_scale import synthetic_pool
    from hssal_ray._faiss import import_faiss, loaded_coretype
    from hssal_ray.frozen.knn_search import ivf_knn
    from hssal_ray.query import HierarchicalQuery, TypiClustQuery
    from hssal_ray.query.backends import FIT_ROWS_PER_CENTROID, make_kmeans
    from hssal_ray.query.hierarchical import auto_coarse_k

    faiss = import_faiss()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    pool, y = synthetic_pool(n, dim, seed)
    out: dict[str, Any] = {"kernels": loaded_coretype(), "steps": {}}

    def step(name: str, fn: Any) -> Any:
        # this process's own clock (ns): /proc's 10 ms ticks read 0 for a smoke run's short steps
        t0, c0 = time.perf_counter(), time.process_time()
        res = np.ascontiguousarray(fn())
        out["steps"][name] = {
            "cpu_s": round(time.process_time() - c0, 4),
            "wall_s": round(time.perf_counter() - t0, 2),
            "digest": hashlib.sha256(res.tobytes()).hexdigest()[:16],
        }
        log.info("%s %s %s", out["kernels"], name, out["steps"][name])
        return res

    budget = max(1, round(fraction * n))
    picks = step("cold_start", lambda: np.asarray(TypiClustQuery(random_state=seed).select(pool, budget)))
    counts = np.bincount(y[picks], minlength=int(y.max()) + 1)
    out["cold_start"] = {
        "picks": int(len(picks)),
        "classes_covered": int((counts > 0).sum()),
        "classes": len(counts),
    }
    emb = pool.embeddings
    step("graph", lambda: ivf_knn(lambda pos: emb[pos].astype(np.float32), n, 10, seed=seed)[1])
    k1 = auto_coarse_k(n, batch)  # HAL's coarse level as HierarchicalQuery fits it (its defaults)
    fit = min(n, HierarchicalQuery().coarse_fit_sample, FIT_ROWS_PER_CENTROID * k1)
    x = emb[np.sort(np.random.default_rng([seed, 3]).choice(n, fit, replace=False))].astype(np.float32)
    out["hal_coarse"] = {"k1": k1, "fit_rows": int(fit)}
    step("hal_coarse", lambda: make_kmeans("auto", n_clusters=k1, random_state=seed).fit(x).labels_)
    return out


def _child(setting: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "HSSAL_FAISS_CORETYPE")}
    env.update(SETTINGS[setting])
    env.update(THREAD_ENV)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", MODULE, "--worker", json.dumps(args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{setting} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000, help="pool rows")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--fraction", type=float, default=0.02, help="the cold start's share of the pool")
    p.add_argument("--batch", type=int, default=2000, help="the HAL batch whose coarse k-means is fitted")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per setting")
    p.add_argument("--smoke", action="store_true", help="a 3,000-row pool at d=32 (a test runs it)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(spec["n"], spec["dim"], spec["fraction"], spec["batch"])))
        return 0
    n, dim, batch = (3000, 32, 60) if args.smoke else (args.n, args.dim, args.batch)
    spec = {"n": n, "dim": dim, "fraction": args.fraction, "batch": batch}
    res = {s: _child(s, spec, args.timeout) for s in SETTINGS}
    lib, prod = res["library"], res["product"]
    rows = []
    for name in lib["steps"]:
        a, b = lib["steps"][name], prod["steps"][name]
        rows.append(
            {
                "step": name,
                f"library cpu_s ({lib['kernels']})": a["cpu_s"],
                f"product cpu_s ({prod['kernels']})": b["cpu_s"],
                "ratio": round(a["cpu_s"] / b["cpu_s"], 2) if b["cpu_s"] > 0 else None,
                "same result": a["digest"] == b["digest"],
            }
        )
    total = [sum(r["steps"][s]["cpu_s"] for s in r["steps"]) for r in (lib, prod)]
    ratio = total[0] / max(total[1], 1e-9)
    text = (
        f"{n:,} synthetic rows (d={dim}), cold start {args.fraction:.0%}, HAL coarse k-means of a "
        f"{batch:,} batch; faiss's OpenBLAS on its own kernels (`{lib['kernels']}`) and on the "
        f"product's (`{prod['kernels']}`), each in its own single-threaded process.\n\n"
        + md_table(rows, list(rows[0]))
        + f"\nall three steps: {total[0]:.1f} vs {total[1]:.1f} CPU-s, **{ratio:.1f}x**\n"
        + "\ncold start, synthetic classes covered: "
        + " vs ".join(
            f"{r['cold_start']['classes_covered']} / {r['cold_start']['classes']}" for r in (lib, prod)
        )
        + f"; HAL's coarse k-means: K1 = {prod['hal_coarse']['k1']}, "
        + f"fitted on {prod['hal_coarse']['fit_rows']:,} rows\n"
    )
    name = "faiss_blas_smoke" if args.smoke else "faiss_blas"
    payload = {
        "spec": spec,
        "settings": res,
        "rows": rows,
        "ratio_total": round(ratio, 2),
    }
    write_result(name, payload, text, module=MODULE, out_dir=args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
