"""Where HAL's hierarchy pays: the query's cost, HAL against its flat variant, as the batch grows.

Both run the product's strategies with the profile's query recipe (read from ``configs/ucm_cpu.yaml``:
``candidate_ratio``, ``late_candidate_ratio``, ``pick``, ``typical_until``, ``alloc_over``,
``alloc_temper``, ``typical_scale``, ``typical_over``, ``boundary_check``; an archive's first rounds
have few labels, so ``pick: auto`` picks typical and ``late_candidate_ratio`` does not act) on the
clustered synthetic pool of :mod:`benchmarks.query_speed` (n rows, d = 512, fp16, 200 true clusters of
geometric sizes). The flat variant clusters the ``r * B`` most uncertain rows into B fine clusters, so
its fine k-means costs ``r * B^2 * d`` per Lloyd iteration and its typicality ``(r * B)^2 * d``; HAL
first splits the pool into K1 coarse clusters (``auto_coarse_k``: ``ceil(B / 3)`` capped at 64) and
solves K1 problems of about ``B / K1`` picks each, which divides both terms by about K1. On the
label-efficiency benchmarks the two pick batches of the same accuracy
(``benchmarks/results/label_efficiency*.md``): this is what the coarse level buys.

Seconds are single-threaded process CPU seconds of ``select`` in a fresh process (the measure of
``query_speed``, robust to other jobs on the machine). Every cell is measured: the flat variant's
cost is dominated by the typicality of its ``r * B`` candidates, not by its Lloyd iterations, so an
extrapolation in ``kmeans_iters`` (as ``query_speed`` does for TypiClust) would be noise.

    python -m benchmarks.hierarchy_scale                 # n = 1M, B in {1k, 2k, 4k}
    python -m benchmarks.hierarchy_scale --quick --out /tmp/hs   # n = 100k, B in {500, 2k}

``--late C`` measures a later round instead: the pool gets seeded probabilities of C classes and 5 labeled
rows a class, so ``pick: auto`` picks uncertain and ``late_candidate_ratio`` acts; ``--set query.KEY=VALUE``
changes the recipe (e.g. ``query.copy_check=late``). Results then go to ``hierarchy_scale_late[_<tag>]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import describe_machine, md_table
from benchmarks.query_speed import make_data, run_worker

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = Path(__file__).resolve().parents[1] / "configs" / "ucm_cpu.yaml"


def recipe() -> dict[str, Any]:
    """The profile's HAL parameters, the same for both strategies.

    The synthetic pool has one uncertainty column (``u_badge``); which score fills it does not change
    what ``select`` costs, so the recipe ranks by that column whatever the profile's ``uncertainty``.
    """
    from hssal_ray.config import load_config

    q = load_config(str(PROFILE)).query
    keys = (
        "candidate_ratio",
        "late_candidate_ratio",
        "pick",
        "typical_until",
        "alloc_over",
        "alloc_temper",
        "typical_scale",
        "typical_over",
        "boundary_check",
        "copy_check",
    )
    return {**{k: getattr(q, k) for k in keys}, "uncertainty": "badge"}


def recipe_with(sets: list[str]) -> dict[str, Any]:
    """:func:`recipe` with ``--set query.KEY=VALUE`` changes, any query key (not only the recipe's)."""
    params = recipe()
    if not sets:
        return params
    from hssal_ray.config import load_config

    keys = [item.partition("=")[0] for item in sets]
    if not all(k.startswith("query.") for k in keys):
        raise ValueError(f"--set takes query.KEY=VALUE, got {sets}")
    q = load_config(str(PROFILE), list(sets)).query
    changed = {k.removeprefix("query.") for k in keys}
    params.update({k: getattr(q, k) for k in (set(params) - {"uncertainty"}) | changed})
    return params


def measure(
    paths: dict[str, str], n: int, budgets: list[int], params: dict[str, Any] | None = None, late: int = 0
) -> list[dict[str, Any]]:
    """HAL and hal_flat, the profile's recipe (or ``params``), at each budget (one fresh process each)."""
    rows, params = [], params or recipe()
    for budget in budgets:
        base = {"paths": paths, "budget": budget, "n": n, "late": late}
        for strategy in ("hal", "hal_flat"):
            rows.append(run_worker({**base, "strategy": strategy, "params": dict(params)}, timeout=3600))
    return rows


def _replaced(row: dict[str, Any]) -> int:
    """Picks the boundary / copy check replaced in that run (0 when it did not run)."""
    return int((row.get("boundary") or {}).get("n_replaced", 0))


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per budget: both strategies' CPU seconds, their ratio, coverage and mean u."""
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        h = next(r for r in rows if r["budget"] == budget and r["strategy"] == "hal")
        f = next(r for r in rows if r["budget"] == budget and r["strategy"] == "hal_flat")
        out.append(
            {
                "budget": budget,
                "coarse K1": h.get("coarse_k"),
                "HAL s": h["seconds"],
                "flat s": f["seconds"],
                "flat / HAL": round(f["seconds"] / max(h["seconds"], 1e-9), 1),
                "HAL peak MB": h["peak_rss_mb"],
                "flat peak MB": f["peak_rss_mb"],
                "coverage HAL / flat (of 200)": f"{h['coverage']} / {f['coverage']}",
                "mean u HAL / flat": f"{h['mean_u']:.3f} / {f['mean_u']:.3f}",
                "picks replaced HAL / flat": f"{_replaced(h)} / {_replaced(f)}",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 100k, budgets 500 and 2000")
    ap.add_argument("--out", default=str(RESULTS), help="result directory")
    ap.add_argument("--late", type=int, default=0, metavar="C", help="a later round, C classes")
    ap.add_argument("--set", action="append", default=[], metavar="query.KEY=VALUE", help="recipe change")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args(argv)
    n, budgets = (100_000, [500, 2000]) if args.quick else (1_000_000, [1000, 2000, 4000])
    try:
        params = recipe_with(args.set)
    except ValueError as e:
        ap.error(str(e))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hierarchy_scale_") as tmp:
        print(f"n = {n}: generating data", flush=True)
        paths = make_data(n, 512, seed=0, out=Path(tmp))
        rows = measure(paths, n, budgets, params, args.late)
    lines = table(rows)
    command = " ".join(["python -m benchmarks.hierarchy_scale", *(sys.argv[1:] if argv is None else argv)])
    res = {
        "benchmark": "hierarchy_scale",
        "command": command,
        "n": n,
        "dim": 512,
        "late_classes": args.late,
        "recipe": params,
        "table": lines,
        "rows": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
        "device": describe_machine(),
    }
    md = [
        "# HAL against its flat variant as the batch grows (query CPU seconds)"
        + (f", a later round ({args.late} classes, 5 labels each)" if args.late else ""),
        "",
        f"- command: `{command}`; n = {n:,} rows, d = 512 fp16, 200 true clusters; recipe {res['recipe']}",
        "- seconds: single-threaded process CPU seconds of `select` in a fresh process, every cell measured",
        f"- wall time of the benchmark {res['wall_s'] / 60:.1f} min on {res['device'].get('cpu')}, "
        "shared machine",
        "",
        md_table(lines, list(lines[0])),
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "hierarchy_scale" + ("_late" if args.late else "") + ("_quick" if args.quick else "")
    stem += f"_{args.tag}" if args.tag else ""
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
