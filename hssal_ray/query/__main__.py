"""``python -m hssal_ray.query SCORES --budget N [--config FILE.yaml] [--strategy NAME] [--out FILE.csv] ...``

Reads a scores file (Parquet file or directory, local or URI), selects ``N`` samples and writes
a CSV ``sample_id,rank,u,coarse_cluster`` (atomically) or prints it to stdout. ``u`` is the
strategy's uncertainty of the pick; ``coarse_cluster`` is HAL's coarse cluster (-1 for strategies
without one). Timings go to stderr; a user error prints one ``error: ...`` line and exits 2.

The strategy's settings are the ``query`` section of ``--config`` (a loop config such as
``configs/ucm_cpu.yaml``: the same HAL the loop runs), then ``--set query.KEY=VALUE`` overrides, then
the flags given; without ``--config`` they start from ``QueryConfig``'s defaults. Any ``query.*``
key can be set, and each is validated as in the loop (its ``budget`` is ignored: ``--budget`` is the
batch size here). With ``query.alloc_purity`` the ``--exclude`` file must hold a ``label`` column
too (the run's ``labeled.parquet`` does).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hssal_ray import _csv, _io
from hssal_ray.errors import HSSALError

logger = logging.getLogger("hssal_ray.query")


def _parser() -> argparse.ArgumentParser:
    from hssal_ray.query.backends import BACKENDS
    from hssal_ray.query.base import available_strategies
    from hssal_ray.query.uncertainty import UNCERTAINTIES

    parts = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="python -m hssal_ray.query", description=parts[1], epilog=parts[2])
    p.add_argument("scores", help="scores Parquet file or directory (local path or URI)")
    p.add_argument("--budget", type=int, required=True, help="number of samples to select")
    p.add_argument("--config", help="loop config YAML whose query section sets the strategy (local or URI)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="query.KEY=VALUE",
        help="override one query setting (repeatable), e.g. --set query.alloc_over=global",
    )
    p.add_argument("--out", help="output CSV (default: print to stdout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--exclude",
        help="already labeled ids: Parquet or CSV with a sample_id column (and label: query.alloc_purity)",
    )
    # The flags below override --config and --set; left out, the config's (or the default) value holds.
    p.add_argument("--strategy", choices=available_strategies(), help="default: hal")
    p.add_argument("--uncertainty", choices=UNCERTAINTIES, help="default: badge")
    p.add_argument("--coarse-k", type=int, help="coarse clusters (0 = auto, the default)")
    p.add_argument("--candidate-ratio", type=float, help="default: 3")
    p.add_argument("--fine-method", choices=("kmeans", "spectral"))
    p.add_argument(
        "--pick", choices=("uncertain", "typical", "balanced", "eer", "cover", "auto", "auto_local")
    )
    p.add_argument("--coarse-fit-sample", type=int)
    p.add_argument("--kmeans-iters", type=int)
    p.add_argument(
        "--backend", dest="kmeans_backend", choices=BACKENDS, help="k-means backend (default: auto)"
    )
    p.add_argument(
        "--ssl-aware", action="store_true", default=None, help="avoid confidently pseudo-labeled rows"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


#: ``query`` keys with a flag of their own (the flag given overrides the config and ``--set``)
_FLAG_KEYS = (
    "strategy",
    "uncertainty",
    "coarse_k",
    "candidate_ratio",
    "fine_method",
    "pick",
    "coarse_fit_sample",
    "kmeans_iters",
    "kmeans_backend",
    "ssl_aware",
)


def query_config(args: argparse.Namespace) -> Any:
    """The validated ``QueryConfig``: ``--config``'s query section, ``--set``, then the flags given.

    Raises:
        ConfigError: an unreadable config, a key outside ``query``, or a bad value.
    """
    from hssal_ray.config import load_config
    from hssal_ray.errors import ConfigError

    overrides = []
    for item in args.set:
        key = item.split("=", 1)[0].strip()
        if not key.startswith("query."):
            raise ConfigError(f"--set {item!r}: only query.* settings apply here (e.g. query.pick=auto)")
        overrides.append(item)
    for key in _FLAG_KEYS:
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"query.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return load_config(args.config, overrides).query


def _needs_probs(cfg: Any, names: set[str], ucols: list[str]) -> bool:
    """Whether the strategy reads class probabilities: BADGE, a score the file lacks, or a pick
    rule that counts the classes (``auto``) or spreads labels (``eer``), or HAL's coarse level read
    from the classes (``coarse_by``) or floored at their number (``coarse_min_classes``)."""
    return (
        cfg.strategy == "badge"
        or (cfg.strategy == "hal" and (cfg.coarse_by != "kmeans" or cfg.coarse_min_classes))
        or any(c not in names for c in ucols)
        or cfg.pick in ("auto", "auto_local", "eer")
        or cfg.late_pick == "eer"
        or (cfg.strategy in ("hal", "hal_flat") and cfg.fine_space != "embedding")
    )


def _columns(path: str, cfg: Any, requires_embeddings: bool, ucols: list[str]) -> list[str]:
    from hssal_ray.query.scores_io import scores_columns

    names = set(scores_columns(path))
    cols = ["embedding"] if requires_embeddings else []
    cols += [c for c in dict.fromkeys(ucols) if c in names]
    if _needs_probs(cfg, names, ucols):
        cols.append("probs")
    cols += [c for c in ("confident",) if c in names]
    if cfg.strategy == "hal" and cfg.coarse_by == "predicted" and "pred" in names:
        cols.append("pred")  # the coarse level's classes, as the loop reads them
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
    from hssal_ray.query.scores_io import (
        exclude_mask,
        load_pool,
        pool_labels,
        read_id_list,
        read_labeled_classes,
    )

    try:
        cfg = query_config(args)
        strategy = strategy_from_config(cfg, random_state=args.seed)
        uname = {"entropy": "entropy", "margin": "margin"}.get(cfg.strategy, cfg.uncertainty)
        ucols = [f"u_{uname}", *(f"u_{name}" for name in cfg.scores_read()[1:])]
        t0 = time.perf_counter()
        cols = _columns(args.scores, cfg, strategy.requires_embeddings, ucols)
        pool = load_pool(args.scores, columns=cols)
        if args.exclude and cfg.reads_classes():  # the labeled rows' classes too
            classes = read_labeled_classes(args.exclude)
            pool.exclude = exclude_mask(pool.ids, list(classes))
            pool.labels = pool_labels(pool.ids, pool.exclude, classes)
        elif args.exclude:
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
