"""When the stop rule (``loop.stop_kappa``) would end the loop, and what stopping there costs.

    python -m benchmarks.stopping --data ../shared/data/ucm --val-fraction 0.2 --seeds 20 --tag stopping_ucm
    python -m benchmarks.stopping --render benchmarks/results/stopping_ucm.json   # rebuild the report

Runs the product's loop (the profile ``configs/ucm_cpu.yaml``: HSSAL; ``--methods`` adds SSL baselines)
far past the profile's 8%: 2% of the training labels to start and 2% a round up to ``--until`` (30%),
with the stop rule off, so every round records its ``stability_kappa`` (``metrics.jsonl``: Cohen's kappa
between its and the previous round's predictions on the unlabeled rows) next to its accuracy. Then for
each threshold x window it applies the product's rule to each seed's kappas
(:func:`hssal_ray.rounds.stability.settled`, the function the loop's score stage calls, so a run with
``loop.stop_kappa=T loop.stop_window=W`` stops at the round found here): the labels the run would have
asked for, its accuracy there against the accuracy at ``--until`` and against the best round of its
curve. Trials run through the same Ray Tune grid as ``benchmarks.label_efficiency``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, describe_machine, md_table
from benchmarks._efficiency_report import dataset_name, evaluated_on
from benchmarks._product import add_product_arguments, run_grid, start, store_identity

__all__ = ["stop_points", "summarize_rule", "report", "main"]

THRESHOLDS = (0.95, 0.97, 0.98, 0.99, 0.995, 0.998)
WINDOWS = (1, 2, 3)
#: the metrics fields a result keeps of each round
KEEP = ("round", "num_labeled", "test_accuracy", "stability_kappa", "stability_changed", "stability_rows")
STRATEGIES = {"hssal": "hal", "ssl_margin": "margin", "ssl_entropy": "entropy", "ssl_random": "random"}


def _kept(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEEP} for r in rows]


def stop_points(rows: Sequence[Mapping[str, Any]], threshold: float, window: int) -> int:
    """The index (into ``rows``, one metrics row a round from round 0) of the round a run with this rule
    stops at: the first round whose last ``window`` kappas settle; the last row if none does."""
    from hssal_ray.rounds.stability import kappas_of, settled

    for i in range(len(rows)):
        if settled(kappas_of(rows[: i + 1]), threshold, window) is not None:
            return i
    return len(rows) - 1


def summarize_rule(
    per_seed: Mapping[int, Sequence[Mapping[str, Any]]], threshold: float, window: int
) -> dict[str, Any]:
    """What the rule does to each seed's run, and over the seeds (accuracy differences in points)."""
    from hssal_ray.rounds.stability import kappas_of, settled

    stops, labels, vs_end, vs_best, fired = [], [], [], [], 0
    for rows in per_seed.values():
        i = stop_points(rows, threshold, window)
        fired += settled(kappas_of(rows[: i + 1]), threshold, window) is not None  # not just run to the end
        acc = [float(r["test_accuracy"]) for r in rows]
        stops.append(int(rows[i]["round"]))
        labels.append(int(rows[i]["num_labeled"]))
        vs_end.append(100 * (acc[i] - acc[-1]))
        vs_best.append(100 * (acc[i] - max(acc)))
    end_labels = float(np.mean([int(rows[-1]["num_labeled"]) for rows in per_seed.values()]))
    return {
        "threshold": threshold,
        "window": window,
        "stopped": f"{fired}/{len(per_seed)}",
        "stop_round_mean": float(np.mean(stops)),
        "labels_mean": float(np.mean(labels)),
        "labels_range": f"{min(labels)}-{max(labels)}",
        "labels_saved_pct": 100 * (1 - float(np.mean(labels)) / end_labels),
        "acc_vs_end_mean": float(np.mean(vs_end)),
        "acc_vs_end_worst": float(np.min(vs_end)),
        "acc_vs_best_mean": float(np.mean(vs_best)),
    }


def per_round(per_seed: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Mean labels, accuracy, kappa and changed share of each round over the seeds."""
    from hssal_ray.rounds.stability import row_kappa

    n = min(len(rows) for rows in per_seed.values())
    out = []
    for i in range(n):
        rs = [rows[i] for rows in per_seed.values()]
        kap = [row_kappa(r) for r in rs]
        changed = [r.get("stability_changed") for r in rs]
        out.append(
            {
                "round": i,
                "labels": float(np.mean([int(r["num_labeled"]) for r in rs])),
                "accuracy": float(np.mean([float(r["test_accuracy"]) for r in rs])),
                "kappa": float(np.nanmean(kap)) if not all(math.isnan(k) for k in kap) else None,
                "changed_pct": (
                    100 * float(np.mean([c for c in changed if c is not None]))
                    if any(c is not None for c in changed)
                    else None
                ),
            }
        )
    return out


def report(result: Mapping[str, Any]) -> str:
    """The Markdown report of a result (``--render`` rebuilds it from the JSON)."""
    lines = [
        f"# When to stop labeling: the stabilizing-predictions rule on {result['dataset']}",
        "",
        f"- command: `{result['command']}`",
        f"- profile: `{result['profile']}` (overrides {result['overrides']})",
        f"- evaluated on: {result['evaluated_on']}; {len(result['seeds'])} seeds; wall time "
        f"{result['wall_s'] / 60:.1f} min on {result['device']['summary']}",
        f"- embeddings: store `{(result.get('store') or {}).get('key', '-')}`, content fingerprint "
        f"`{(result.get('store') or {}).get('fingerprint', '-')}`",
        "",
    ]
    runs = {m: {int(s): rows for s, rows in by_seed.items()} for m, by_seed in result["runs"].items()}
    if len(runs) > 1:
        lines += _methods_section(runs, result)
    for method, per_seed in runs.items():
        lines += [f"## {method}", "", "Each round, mean over the seeds (kappa: against the round before):"]
        lines.append("")
        lines.append(md_table(per_round(per_seed), ["round", "labels", "accuracy", "kappa", "changed_pct"]))
        lines += [
            "",
            f"The rule `loop.stop_kappa=T loop.stop_window=W` on each seed's kappas (accuracy in points; "
            f"a seed it never stops runs to the end, {result['until']:.0%}):",
            "",
        ]
        rules = [summarize_rule(per_seed, t, w) for t in result["thresholds"] for w in result["windows"]]
        lines.append(
            md_table(
                rules,
                [
                    "threshold",
                    "window",
                    "stopped",
                    "stop_round_mean",
                    "labels_mean",
                    "labels_range",
                    "labels_saved_pct",
                    "acc_vs_end_mean",
                    "acc_vs_end_worst",
                    "acc_vs_best_mean",
                ],
            )
        )
        lines.append("")
    return "\n".join(lines) + "\n"


#: the rules the across-methods table shows
COMPARED = ((0.99, 3), (0.998, 3))


def _methods_section(runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]], result: Any) -> list[str]:
    """Every method's mean accuracy each round, and where each compared rule stops it."""
    n = min(len(rows) for by_seed in runs.values() for rows in by_seed.values())
    first = next(iter(runs.values()))
    curve = []
    for i in range(n):
        labels = np.mean([rows[i]["num_labeled"] for rows in first.values()])
        row: dict[str, Any] = {"labels": f"{labels:.0f}"}
        for m, by_seed in runs.items():
            row[m] = f"{np.mean([rows[i]['test_accuracy'] for rows in by_seed.values()]):.4f}"
        curve.append(row)
    stops = []
    for m, by_seed in runs.items():
        entry: dict[str, Any] = {"method": m, "seeds": len(by_seed)}
        for t, w in COMPARED:
            idx = {s: stop_points(rows, t, w) for s, rows in by_seed.items()}
            labels = [by_seed[s][i]["num_labeled"] for s, i in idx.items()]
            acc = [by_seed[s][i]["test_accuracy"] for s, i in idx.items()]
            entry[f"{t}/{w} labels"] = float(np.mean(labels))
            entry[f"{t}/{w} accuracy"] = f"{np.mean(acc):.4f} ± {np.std(acc):.4f}"
        end = [rows[-1]["test_accuracy"] for rows in by_seed.values()]
        entry[f"at {result['until']:.0%}"] = f"{np.mean(end):.4f} ± {np.std(end):.4f}"
        stops.append(entry)
    cols = ["method", "seeds"] + [f"{t}/{w} {k}" for t, w in COMPARED for k in ("labels", "accuracy")]
    return [
        "## Every method",
        "",
        "Mean accuracy each round (the same seeds, splits and cold start for every method):",
        "",
        md_table(curve, ["labels", *runs]),
        "",
        "Where the rule `loop.stop_kappa / loop.stop_window` stops each method (labels and accuracy at the "
        "stop, mean over seeds), and the accuracy at the end:",
        "",
        md_table(stops, [*cols, f"at {result['until']:.0%}"]),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stopping", description=__doc__.split("\n")[0])
    add_product_arguments(p, "stopping")
    p.add_argument("--until", type=float, default=0.30, help="label fraction the runs go to (stop rule off)")
    p.add_argument("--step", type=float, default=0.02, help="cold start and batch, fractions of the split")
    p.add_argument("--methods", nargs="*", default=["hssal"], choices=sorted(STRATEGIES))
    p.add_argument("--dataset-name", default=None)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument(
        "--render",
        metavar="RESULT_JSON",
        default=None,
        help="run nothing: rebuild a finished result's report (this version's thresholds and windows)",
    )
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        if not path.is_file():
            p.error(f"--render: no result file {path}")
        result = json.loads(path.read_text())
        result.update(thresholds=list(THRESHOLDS), windows=list(WINDOWS))  # the rules read off the kappas
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
        text = report(result)
        path.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if not 0 < args.step < args.until <= 1:
        p.error(f"need 0 < --step < --until <= 1, got {args.step} and {args.until}")
    rounds = math.ceil(round((args.until - args.step) / args.step, 6))
    args.overrides = [
        f"loop.initial_labeled={args.step}",
        f"query.budget={args.step}",
        f"loop.total_budget={args.until}",
        f"loop.rounds={rounds}",
        "loop.stop_kappa=0",
        *args.overrides,
    ]
    t0 = time.perf_counter()
    base, run_dir, _, n_train = start(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    grid = {"query.strategy": [STRATEGIES[m] for m in args.methods], "seed": seeds}
    kw = dict(num_cpus=2 * args.concurrent, concurrent=args.concurrent)
    got = run_grid(base, f"{args.tag}_ssl", run_dir, grid, fixed={"ssl.enabled": True}, **kw)
    runs = {m: {s: _kept(got[(STRATEGIES[m], s)]) for s in seeds} for m in args.methods}
    runs = {m: {s: rows for s, rows in by_seed.items() if rows} for m, by_seed in runs.items()}
    from benchmarks.label_efficiency import eval_split_size

    result = {
        "benchmark": args.tag,
        "dataset": dataset_name(args.data, args.dataset_name),
        "data": args.data,
        "profile": args.profile,
        "overrides": args.overrides,
        "command": command_line("benchmarks.stopping", argv),
        "evaluated_on": evaluated_on(args.val_fraction, eval_split_size(base)),
        "n_train": n_train,
        "until": args.until,
        "seeds": seeds,
        "thresholds": list(THRESHOLDS),
        "windows": list(WINDOWS),
        "runs": runs,
        "store": store_identity(base, run_dir),
        "wall_s": time.perf_counter() - t0,
        "device": describe_machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = report(result)
    (out / f"{args.tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
