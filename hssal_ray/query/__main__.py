"""``python -m hssal_ray.query SCORES --strategy NAME --budget N [--out FILE.csv] ...``

Reads a scores file (Parquet file or directory, local or URI), selects ``N`` samples and writes
a CSV ``sample_id,rank,u,coarse_cluster`` (atomically) or prints it to stdout. ``u`` is the
strategy's uncertainty of the pick; ``coarse_cluster`` is HAL's coarse cluster (-1 for strategies
without one). Timings go to stderr; a user error prints one ``error: ...`` line and exits 2.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
import types
from collections.abc import Sequence

import numpy as np

from hssal_ray import _csv, _io
from hssal_ray.errors import HSSALError

logger = logging.getLogger("hssal_ray.query")


def _parser() -> argparse.ArgumentParser:
    from hssal_ray.query.backends import BACKENDS
    from hssal_ray.query.base import available_strategies
    from hssal_ray.query.uncertainty import UNCERTAINTIES

    p = argparse.ArgumentParser(prog="python -m hssal_ray.query", description=__doc__.split("\n\n")[1])
    p.add_argument("scores", help="scores Parquet file or directory (local path or URI)")
    p.add_argument("--strategy", default="hal", choices=available_strategies())
    p.add_argument("--budget", type=int, required=True, help="number of samples to select")
    p.add_argument("--out", help="output CSV (default: print to stdout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", help="already labeled ids: Parquet or CSV with a sample_id column")
    p.add_argument("--uncertainty", default="badge", choices=UNCERTAINTIES)
    p.add_argument("--coarse-k", type=int, default=0, help="coarse clusters (0 = auto)")
    p.add_argument("--candidate-ratio", type=float, default=3.0)
    p.add_argument("--fine-method", default="kmeans", choices=("kmeans", "spectral"))
    p.add_argument("--pick", default="uncertain", choices=("uncertain", "typical"))
    p.add_argument("--coarse-fit-sample", type=int, default=100_000)
    p.add_argument("--kmeans-iters", type=int, default=20)
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="k-means backend")
    p.add_argument("--ssl-aware", action="store_true", help="avoid confidently pseudo-labeled rows")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _columns(path: str, strategy_name: str, requires_embeddings: bool, ucol: str) -> list[str]:
    from hssal_ray.query.scores_io import scores_columns

    names = set(scores_columns(path))
    cols = ["embedding"] if requires_embeddings else []
    if ucol in names:
        cols.append(ucol)
    if strategy_name == "badge" or ucol not in names:
        cols.append("probs")
    cols += [c for c in ("confident",) if c in names]
    return [c for c in cols if c in names or c == "embedding"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from hssal_ray.query.base import strategy_from_config
    from hssal_ray.query.scores_io import exclude_mask, load_pool, read_id_list

    try:
        cfg = types.SimpleNamespace(
            strategy=args.strategy,
            uncertainty=args.uncertainty,
            coarse_k=args.coarse_k,
            candidate_ratio=args.candidate_ratio,
            fine_method=args.fine_method,
            pick=args.pick,
            coarse_fit_sample=args.coarse_fit_sample,
            kmeans_backend=args.backend,
            kmeans_iters=args.kmeans_iters,
            ssl_aware=args.ssl_aware,
        )
        strategy = strategy_from_config(cfg, random_state=args.seed)
        uname = {"entropy": "entropy", "margin": "margin"}.get(args.strategy, args.uncertainty)
        t0 = time.perf_counter()
        cols = _columns(args.scores, args.strategy, strategy.requires_embeddings, f"u_{uname}")
        pool = load_pool(args.scores, columns=cols)
        if args.exclude:
            pool.exclude = exclude_mask(pool.ids, read_id_list(args.exclude))
        t1 = time.perf_counter()
        picks = strategy.select(pool, args.budget)
        t2 = time.perf_counter()
        try:
            u = pool.uncertainty(uname)[picks]
        except HSSALError:
            u = np.full(len(picks), np.nan, dtype=np.float32)
        cc = np.asarray(getattr(strategy, "info_", {}).get("pick_coarse_cluster", np.full(len(picks), -1)))
        buf = io.StringIO()
        w = _csv.writer(buf, lineterminator="\n")
        w.writerow(["sample_id", "rank", "u", "coarse_cluster"])
        for rank, (i, ui, ci) in enumerate(zip(picks, u, cc, strict=True)):
            w.writerow([pool.ids[i], rank, f"{float(ui):.6g}", int(ci)])
        if args.out:
            _io.atomic_write_text(args.out, buf.getvalue())
        else:
            sys.stdout.write(buf.getvalue())
        n_ex = int(np.count_nonzero(pool.exclude)) if pool.exclude is not None else 0
        print(
            f"read {t1 - t0:.3f} s ({len(pool)} rows, {n_ex} excluded); select {t2 - t1:.3f} s "
            f"({strategy!r}); wrote {len(picks)} rows to {args.out or 'stdout'}",
            file=sys.stderr,
        )
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
