"""k-means++ seeding: the product's ``init_centers`` (torch, greedy) vs scikit-learn's ``kmeans_plusplus``.

    python -m benchmarks.kmeans_init

Issue 18 asks whether the hand-written seeding should give way to scikit-learn's. Both run greedy
k-means++ (``2 + log k`` candidates a step) on the same rows; the table reports wall time and the
seeding potential (sum of squared distances of the rows to their nearest centre, lower is better),
mean of 3 seeds, one thread each. HAL seeds every k-means it runs (coarse, then one per cluster),
so seeding time is part of every query.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from benchmarks._common import md_table, setup_logging, write_result

CASES = ((2_000, 64, 21), (5_000, 128, 100), (20_000, 128, 300))


def potential(X: np.ndarray, C: np.ndarray) -> float:
    d2 = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :]
    return float(np.maximum(d2, 0).min(1).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kmeans_init", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    setup_logging()
    import torch
    from sklearn.cluster import kmeans_plusplus

    from hssal_ray.query.kmeans_ops import init_centers

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for n, d, k in CASES:
        res: dict[str, list[float]] = {"torch_s": [], "sklearn_s": [], "torch_pot": [], "sklearn_pot": []}
        for seed in range(args.seeds):
            gen = np.random.default_rng(seed)
            centres = gen.normal(size=(k, d)).astype(np.float32) * 3
            X = (centres[gen.integers(k, size=n)] + gen.normal(size=(n, d))).astype(np.float32)
            t0 = time.perf_counter()
            C = init_centers(torch.from_numpy(X), k, np.random.default_rng(seed), init_size=n).numpy()
            res["torch_s"].append(time.perf_counter() - t0)
            res["torch_pot"].append(potential(X, C))
            t0 = time.perf_counter()
            C2, _ = kmeans_plusplus(X, k, random_state=seed)
            res["sklearn_s"].append(time.perf_counter() - t0)
            res["sklearn_pot"].append(potential(X, C2))
        m = {key: float(np.mean(v)) for key, v in res.items()}
        rows.append(
            {
                "n": n,
                "d": d,
                "k": k,
                "torch_s": round(m["torch_s"], 3),
                "sklearn_s": round(m["sklearn_s"], 3),
                "sklearn_over_torch_time": round(m["sklearn_s"] / m["torch_s"], 2),
                "potential_ratio_torch_over_sklearn": round(m["torch_pot"] / m["sklearn_pot"], 3),
            }
        )
    text = (
        f"Greedy k-means++ seeding on n Gaussian-blob rows (d dims, k true blobs, k centres), one thread, "
        f"mean of {args.seeds} seeds. `potential_ratio` < 1: the product's centres are tighter.\n\n"
        + md_table(rows, list(rows[0]))
    )
    write_result("kmeans_init", {"rows": rows}, text, module="benchmarks.kmeans_init", out_dir=args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
