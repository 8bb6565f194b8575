"""TypiClust's cold start at archive scale: the cluster cap and the sampled fit against the plain k-means.

``python -m benchmarks.cold_start_scale --n 100000`` (default; ``--smoke``: a tiny pool, in a test)

On a synthetic pool of the frozen path's shape (``benchmarks.frozen_scale``'s generator: d=1280 float16
clean features, 21 classes of clustered, rectified features, L2-normalised as the cold start's pool is),
single-threaded, the product's :class:`hssal_ray.query.TypiClustQuery` picks ``--fraction`` of the
pool (round 0's 2%) twice, in one process:

* ``capped``: the product (at most ``MAX_CLUSTERS`` = 500 clusters, fitted on 256 rows a cluster when
  the pool holds more, then one assignment pass);
* ``plain``: ``max_clusters`` = the pool, i.e. one cluster a pick over the whole pool, what it did
  before session 48 (the cost a 2% cold start of 1M images would have: 20,000 clusters).

For each: CPU seconds (the process), peak RSS since the run began, and what the batch covers: the
synthetic classes holding a pick and the largest share of the batch in one class. Writes
``<out>/cold_start_scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks._common import md_table, setup_logging, write_result
from benchmarks._sampler import peak_mb, reset_peak_rss

__all__ = ["main", "run"]

log = logging.getLogger("benchmarks")


def synthetic_pool(n: int, dim: int, seed: int) -> tuple[Any, np.ndarray]:
    """The cold start's pool of ``n`` synthetic rows (unit float16 clean features) and their classes."""
    import torch

    from benchmarks.frozen_scale import _blocks, _labels, sample_id
    from hssal_ray.query import Pool

    emb = np.empty((n, dim), dtype=np.float16)
    s = 0
    for block in _blocks(n, dim, seed):
        x = torch.from_numpy(block["none"]).float()
        emb[s : s + len(x)] = torch.nn.functional.normalize(x, dim=1).half().numpy()
        s += len(x)
    ids = np.array([sample_id(i) for i in range(n)], dtype=object)
    return Pool(ids=ids, embeddings=emb), _labels(n, seed)


def run(
    n: int, fraction: float, dim: int = 1280, seed: int = 0, variants: Sequence[str] = ("capped", "plain")
) -> list[dict[str, Any]]:
    """Both selections on one pool, one thread; a row per variant."""
    import torch

    from hssal_ray.query import TypiClustQuery
    from hssal_ray.query.baselines import MAX_CLUSTERS

    torch.set_num_threads(1)
    try:
        from hssal_ray._faiss import import_faiss

        import_faiss().omp_set_num_threads(1)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    pool, y = synthetic_pool(n, dim, seed)
    budget = max(1, round(fraction * n))
    rows = []
    for name in variants:
        cap = MAX_CLUSTERS if name == "capped" else n
        reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()  # this process's own ns clock, not /proc's ticks
        q = TypiClustQuery(max_clusters=cap, random_state=seed)
        picks = q.select(pool, budget)
        counts = np.bincount(y[picks], minlength=int(y.max()) + 1)
        rows.append(
            {
                "variant": name,
                "n": n,
                "budget": budget,
                "clusters": int(min(budget, n, cap)),
                "cpu_s": round(time.process_time() - c0, 4),
                "wall_s": round(time.perf_counter() - t0, 2),
                "kmeans_s": round(q.info_["seconds"]["kmeans"], 2),
                "peak_rss_mb": round(peak_mb(), 1),
                "classes_covered": int((counts > 0).sum()),
                "classes": int(len(counts)),
                "largest_class_share": round(float(counts.max() / budget), 3),
            }
        )
        log.info("%s", rows[-1])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_start_scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, default=100_000, help="pool rows")
    p.add_argument("--fraction", type=float, default=0.02, help="the cold start's share of the pool")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="a 3,000-row pool at d=32, 20%% (a test runs it)")
    args = p.parse_args(argv)
    setup_logging()
    n, dim, frac = (3000, 32, 0.2) if args.smoke else (args.n, args.dim, args.fraction)
    rows = run(n, frac, dim)
    by = {r["variant"]: r for r in rows}
    ratio = by["plain"]["cpu_s"] / max(by["capped"]["cpu_s"], 1e-9)
    text = (
        f"TypiClust picking {rows[0]['budget']} of {n} synthetic rows (d={dim}), one thread, one process; "
        "`capped` is the product, `plain` one cluster a pick over the whole pool (before session 48).\n\n"
        + md_table(rows, list(rows[0]))
        + f"\nplain / capped CPU time: **{ratio:.1f}x**\n"
    )
    name = "cold_start_scale_smoke" if args.smoke else "cold_start_scale"
    write_result(
        name,
        {"rows": rows, "plain_over_capped_cpu": round(ratio, 2)},
        text,
        module="benchmarks.cold_start_scale",
        out_dir=args.out,
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
