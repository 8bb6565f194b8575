"""Replay the query rounds of finished runs: does each batch reproduce, and what would an option change?

    python -m benchmarks.query_replay SWEEP [SWEEP ...] [--set query.KEY=VALUE ...] [--out PATH]

For every trial (a run directory under a sweep: ``config.yaml``, ``labeled.parquet``) and every query
round ``r`` (``round_XXX/scores.parquet`` and ``round_XXX/query.csv``), the round's query is run again
through the product's own path (:func:`hssal_ray.loop.query_batch.run_query`, the round's derived seed)
on the pool that round scored and the labeled set it had (rows of ``labeled.parquet`` added up to round
``r``, with their classes), twice:

- under the run's own config: ``reproduced`` = the batch is the one ``query.csv`` recorded (the same
  code on another machine or cache need not give it: a near-tie in a k-means distance decides);
- under the run's config with the ``--set`` overrides: ``differ`` = picks not in the replayed batch,
  and for HAL ``moved`` = the share of the batch that changed coarse cluster,
  ``0.5 * sum_k |b_k' - b_k| / B`` (the coarse level is the same unless an override changes it).

Only the first query round of a trial compares the two choices on the same pool; later rounds replay
an option on the labeled sets the run's own choices built (what it would change there, not where it
would have led). Per round: trials, share reproduced, median and 10th-90th percentile of ``differ``
and ``moved``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, emit_report, query_rounds

__all__ = ["replay_trial", "summarise", "main"]


def _trials(sweep: Path) -> list[Path]:
    """Run directories of a sweep (or the sweep itself when it is one), sorted."""
    if (sweep / "config.yaml").exists():
        return [sweep]
    return sorted(
        p for p in sweep.iterdir() if (p / "config.yaml").is_file() and (p / "labeled.parquet").is_file()
    )


def replay_trial(run: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """One row per query round of ``run``: ``round``, ``budget``, ``reproduced``, ``differ``, ``moved``."""
    import pyarrow.parquet as pq

    from hssal_ray.loop.query_batch import run_query
    from hssal_ray.loop.run_config import load_run_config

    cfg = load_run_config(str(run))
    alt = load_run_config(str(run), overrides) if overrides else None
    lab = pq.read_table(run / "labeled.parquet", columns=["sample_id", "label", "round_added"]).to_pydict()
    out = []
    for r, sf, recorded in query_rounds(run):
        rows = zip(lab["sample_id"], lab["label"], lab["round_added"], strict=True)
        known = {s: int(c) for s, c, a in rows if a <= r}  # the labels (with classes) the round's query saw
        ids, _, coarse, _ = run_query(cfg, str(sf), len(recorded), known, r)
        row: dict[str, Any] = {"round": r, "budget": len(recorded), "reproduced": ids == recorded}
        if alt is not None:
            ids2, _, coarse2, _ = run_query(alt, str(sf), len(recorded), known, r)
            row["differ"] = len(set(ids2) - set(ids))
            if coarse is not None and coarse2 is not None:
                k = max(max(coarse), max(coarse2)) + 1
                b, b2 = np.bincount(coarse, minlength=k), np.bincount(coarse2, minlength=k)
                row["moved"] = float(0.5 * np.abs(b2 - b).sum() / max(len(ids), 1))
        out.append(row)
    return out


def summarise(sweeps: list[Path], overrides: list[str]) -> dict[str, Any]:
    """``{"trials": n, "rounds": {round: {...}}}``: the module docstring's statistics per query round."""
    rows: dict[int, list[dict[str, Any]]] = {}
    trials = [t for s in sweeps for t in _trials(s)]
    if not trials:
        raise SystemExit(f"no run directories under {', '.join(map(str, sweeps))}")
    for i, t in enumerate(trials, 1):
        for row in replay_trial(t, overrides):
            rows.setdefault(row["round"], []).append(row)
        print(f"[{i}/{len(trials)}] {t.name}", file=sys.stderr)
    summary: dict[int, dict[str, Any]] = {}
    for r, rs in sorted(rows.items()):
        s: dict[str, Any] = {"trials": len(rs), "reproduced": float(np.mean([x["reproduced"] for x in rs]))}
        for key in ("differ", "moved"):
            vals = [x[key] for x in rs if key in x]
            if vals:
                s[key] = [float(np.median(vals)), *(float(v) for v in np.percentile(vals, [10, 90]))]
        s["budget"] = int(np.median([x["budget"] for x in rs]))
        summary[r] = s
    return {"trials": len(trials), "overrides": overrides, "rounds": summary}


def report_markdown(summary: dict[str, Any], command: str) -> str:
    ov = " ".join(summary["overrides"]) or "(none: reproduction only)"
    md = [
        "# Query replay (each round's batch run again from the run directories)",
        "",
        f"- command: `{command}`",
        f"- trials: {summary['trials']}; overrides: {ov}",
        "- reproduced: share of trials whose batch under the run's own config is the recorded one; differ:"
        " picks not in it under the overrides, moved: share of the batch that changed coarse cluster"
        " (median [10th-90th percentile]); see the module docstring of `benchmarks/query_replay.py`",
        "",
        "| query round | trials | batch size | reproduced | differ | moved |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v: list[float] | None, fmt: str) -> str:
        return "" if v is None else f"{v[0]:{fmt}} [{v[1]:{fmt}}-{v[2]:{fmt}}]"

    for r, s in summary["rounds"].items():
        differ, moved = cell(s.get("differ"), ".1f"), cell(s.get("moved"), ".2f")
        md.append(f"| {r} | {s['trials']} | {s['budget']} | {s['reproduced']:.2f} | {differ} | {moved} |")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.query_replay", description=__doc__.split("\n")[0])
    p.add_argument("sweeps", nargs="+", help="sweep directories of trial run directories, or run directories")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="query.KEY=VALUE",
        help="the option to compare (repeat it)",
    )
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    summary = summarise([Path(s) for s in args.sweeps], args.set)
    text = report_markdown(summary, command_line("benchmarks.query_replay", argv))
    emit_report(args.out, summary, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
