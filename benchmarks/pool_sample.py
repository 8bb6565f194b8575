"""What ``query.pool_sample`` saves: the score stage of the image path over the whole pool and over a sample.

    python -m benchmarks.pool_sample                          # 12,000 synthetic images, sample 0.1
    python -m benchmarks.pool_sample --per-class 500 --samples 0 0.25 --smoke

Runs the real CLI (``python -m hssal_ray.loop``, the fine-tuning path with its default small CNN) on one
seeded synthetic archive (``--classes`` x ``--per-class`` images of ``--size`` px, generated once under
``--work-dir``, never in the repository) once per ``query.pool_sample`` value, the same seed, budget and
rounds, a TypiClust cold start, and reads each round's stage wall times from the run's own
``metrics.jsonl``. It also checks, from the run directory, that every round's ``scores.parquet`` holds the
labeled rows plus the sample's size, that the round's query picked only scored rows, and the same of the
cold start (``cold_start/scores.parquet``, the labeled set's round-0 rows). Wall times: compare only the
rows of one run (a shared 2-core machine); what the sample changes is the score stage, linear in the rows it
decodes and forwards.
Writes ``<out>/pool_sample.json`` and ``.md`` (``--smoke``: ``pool_sample_smoke.*``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import md_table, setup_logging, write_result


def _archive(work: Path, classes: int, per_class: int, size: int) -> Path:
    """The synthetic archive, generated once per parameters."""
    from hssal_ray.data.synthetic import make_synthetic_rs

    root = work / f"synthetic_{classes}x{per_class}_{size}px"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_synthetic_rs(str(root), num_classes=classes, per_class=per_class, size=size, seed=0)
        done.write_text("ok\n")
    return root


def _run(root: Path, run_dir: Path, sample: float, args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    name = f"ps_{sample:g}".replace(".", "_")
    shutil.rmtree(run_dir / name, ignore_errors=True)  # a finished run there would resume, not re-measure
    value = sample if 0 < sample < 1 else int(sample)  # a count, or a fraction of the training split
    cmd = [
        sys.executable,
        "-m",
        "hssal_ray.loop",
        f"data.root={root}",
        f"data.image_size={args.size}",
        f"loop.run_dir={run_dir}",
        f"loop.name={name}",
        f"loop.rounds={args.rounds}",
        f"loop.initial_labeled={args.budget}",
        f"query.budget={args.budget}",
        f"ssl.steps_per_round={args.steps}",
        f"query.pool_sample={value}",
        "loop.cold_start=typiclust",  # the cold start's scoring pass, which the sample bounds too
        "loop.report=false",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the loop failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    run = run_dir / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cold = _scored_ids(run / "cold_start" / "scores.parquet")
    lab = pq.read_table(run / "labeled.parquet", columns=["sample_id", "round_added"]).to_pylist()
    first = {r["sample_id"] for r in lab if r["round_added"] == 0}  # the cold start's picks
    history = json.loads((run / "state.json").read_text())["history"]
    return {
        "sample": value,
        "wall_s": wall,
        "rounds": rows,
        "checks": _check_rounds(run, rows),
        "cold_start_scored_rows": len(cold),
        "cold_start_s": next(h[2] for h in history if h[1] == "init"),  # the init stage is the cold start
        "cold_start_picks": len(first),
        "cold_start_picks_all_scored": first <= cold,
    }


def _scored_ids(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist())


def _picked(path: Path) -> set[str]:
    with open(path, newline="") as f:
        return {row["sample_id"] for row in csv.DictReader(f)}


def _check_rounds(run: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per queried round: rows scored, of them labeled, and whether the picks are all scored rows."""
    out = []
    for r in rows:
        d = run / f"round_{r['round']:03d}"
        if not (d / "query.csv").exists():
            continue
        scored, picked = _scored_ids(d / "scores.parquet"), _picked(d / "query.csv")
        out.append(
            {
                "round": r["round"],
                "scored_rows": len(scored),
                "labeled": r.get("num_labeled"),
                "picks": len(picked),
                "picks_all_scored": picked <= scored,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pool_sample", description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--per-class", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", type=float, nargs="+", default=[0.0, 0.1], help="query.pool_sample values")
    p.add_argument("--budget", type=int, default=30, help="loop.initial_labeled and query.budget")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="ssl.steps_per_round")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/hssal_pool_sample"))
    p.add_argument("--run-dir", type=Path, default=Path("runs/benchmarks/pool_sample"))
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, one round (a test runs it)")
    args = p.parse_args(argv)
    if args.smoke:
        args.per_class, args.rounds, args.steps, args.budget = min(args.per_class, 40), 1, 2, 6
    setup_logging()
    root = _archive(args.work_dir, args.classes, args.per_class, args.size)
    runs = [_run(root, args.run_dir, s, args) for s in args.samples]
    table = []
    for run in runs:
        checks = {c["round"]: c for c in run["checks"]}
        for r in run["rounds"]:
            c = checks.get(r["round"], {})
            table.append(
                {
                    "pool_sample": run["sample"],
                    "round": r["round"],
                    "labeled": r.get("num_labeled"),
                    "scored rows": c.get("scored_rows", "-"),
                    "score_s": r.get("wall_s", {}).get("score", "-"),
                    "query_s": r.get("wall_s", {}).get("query", "-"),
                    "train_s": r.get("wall_s", {}).get("train"),
                    "picks all scored": c.get("picks_all_scored", "-"),
                    "test_accuracy": r.get("test_accuracy"),
                }
            )
    base = [t["score_s"] for t in table if t["pool_sample"] == runs[0]["sample"] and t["score_s"] != "-"]
    lines = [
        f"One synthetic archive of {args.classes} x {args.per_class} images at {args.size} px, the product's "
        f"CLI (fine-tuning path, default model), {args.steps} steps a round, cold start and batches of "
        f"{args.budget}, {args.rounds} query rounds, once per `query.pool_sample` value; stage seconds from "
        "each run's `metrics.jsonl` (the last round only trains and evaluates).",
        "",
        md_table(table, list(table[0])),
        "",
    ]
    for run in runs:
        lines.append(
            f"- `query.pool_sample={run['sample']}`: the TypiClust cold start ({run['cold_start_s']:.1f} s) "
            f"scored {run['cold_start_scored_rows']:,} rows and picked {run['cold_start_picks']} of them "
            f"(all among the scored: {run['cold_start_picks_all_scored']})."
        )
    for run in runs[1:]:
        mine = [t["score_s"] for t in table if t["pool_sample"] == run["sample"] and t["score_s"] != "-"]
        if base and mine:
            ratio = sum(base) / max(sum(mine), 1e-9)
            lines.append(
                f"- `query.pool_sample={run['sample']}`: score stage {sum(mine):.1f} s over its rounds "
                f"against {sum(base):.1f} s for `{runs[0]['sample']}` ({ratio:.1f}x)."
            )
    text = "\n".join(lines) + "\n"
    write_result(
        "pool_sample_smoke" if args.smoke else "pool_sample",
        {"runs": runs, "table": table},
        text,
        module="benchmarks.pool_sample",
        out_dir=args.out,
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
