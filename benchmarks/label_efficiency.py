"""Label efficiency of the product on a real dataset: HSSAL against SSL-only, AL-only and supervised runs.

    python -m benchmarks.label_efficiency                      # UCM, 3 seeds, the standard set, test split
    python -m benchmarks.label_efficiency --seeds 5
    python -m benchmarks.label_efficiency --val-fraction 0.2 --tag label_efficiency_val   # tuning
    python -m benchmarks.label_efficiency --data ../shared/data/siri_whu --dataset-name SIRI-WHU

The report and the plot name the dataset (``--dataset-name``, default: the ``--data`` folder's name)
and the size of the split every number was measured on.

Every method and seed is one run of the real loop (``python -m hssal_ray.loop`` with the profile
``configs/ucm_cpu.yaml``), run as trials of a Ray Tune grid through ``hssal_ray.tune`` (a grid over
``query.strategy`` x ``seed`` for the SSL methods, one for the supervised ones, one for full
supervision). All methods of a seed share the split (catalog seed), the cold start (TypiClust on the
pretrained features, no labels needed) and the ``query.budget`` schedule (2% -> 4% -> 6% -> 8% of the
training labels). Full supervision is the same backbone, regime and pipeline on every training label.
The test split is read once per reported number (each round's evaluation); ``--val-fraction`` instead
evaluates on a validation split carved from the training split, for choosing the recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, describe_machine
from benchmarks._product import add_product_arguments, labels_setting, run_grid, start

log = logging.getLogger("benchmarks.label_efficiency")

SSL_METHODS = {
    "hssal": "hal",
    "hssal_flat": "hal_flat",
    "ssl_random": "random",
    "ssl_entropy": "entropy",
    "ssl_margin": "margin",
    "ssl_typiclust": "typiclust",
    "ssl_badge": "badge",
    "ssl_coreset": "coreset",
}
SUPERVISED_METHODS = {"supervised_random": "random", "supervised_hal": "hal"}
BASELINES = (
    "hssal_flat",
    "ssl_entropy",
    "ssl_margin",
    "ssl_badge",
    "ssl_typiclust",
    "ssl_random",
    "supervised_hal",
)


def collect(results: dict[str, dict[int, list[dict[str, Any]]]], n_train: int) -> dict[str, Any]:
    """``summary[method]`` (the contract layout) plus per-seed accuracies, from the trials' metrics rows."""
    out: dict[str, Any] = {}
    for method, by_seed in results.items():
        seeds = sorted(s for s, rows in by_seed.items() if rows)
        if not seeds:
            continue
        n_rounds = min(len(by_seed[s]) for s in seeds)
        acc = np.array([[r["test_accuracy"] for r in by_seed[s][:n_rounds]] for s in seeds])
        online = np.array(
            [[r.get("test_accuracy_online", np.nan) for r in by_seed[s][:n_rounds]] for s in seeds]
        )
        labels = [int(r["num_labeled"]) for r in by_seed[seeds[0]][:n_rounds]]
        out[method] = {
            "num_labeled": labels,
            "label_fraction": [n / n_train for n in labels],
            "accuracy_mean": acc.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(),
            "online_accuracy_mean": np.nanmean(online, 0).tolist(),
            "seeds": seeds,
            "per_seed": {int(s): acc[i].tolist() for i, s in enumerate(seeds)},
        }
    full = out.get("full_supervision")
    if full:
        ref = full["accuracy_mean"][-1]
        for m in out.values():
            m["pct_of_full_supervision"] = [100 * a / ref for a in m["accuracy_mean"]]
    return out


def paired(summary: dict[str, Any], method: str = "hssal") -> dict[str, Any]:
    """HSSAL minus each baseline, seed by seed, at every round: mean, std, and whether within one std."""
    h = summary.get(method)
    out: dict[str, Any] = {}
    if not h:
        return out
    for other, o in summary.items():
        if other in (method, "full_supervision"):
            continue
        common = sorted(set(h["per_seed"]) & set(o["per_seed"]))
        if not common:
            continue
        n = min(len(h["num_labeled"]), len(o["num_labeled"]))
        d = np.array([np.array(h["per_seed"][s][:n]) - np.array(o["per_seed"][s][:n]) for s in common])
        std_other = np.array(o["accuracy_std"][:n])
        out[other] = {
            "diff_mean": d.mean(0).tolist(),
            "diff_std": d.std(0).tolist(),
            "wins": (d > 0).sum(0).tolist(),
            "seeds": common,
            "within_one_std": (
                np.abs(d.mean(0)) <= np.maximum(std_other, np.array(h["accuracy_std"][:n]))
            ).tolist(),
        }
    return out


def checks(summary: dict[str, Any], diffs: dict[str, Any]) -> list[str]:
    """The issue's acceptance lines, measured."""
    lines = []
    h = summary.get("hssal")
    if h and "full_supervision" in summary:
        lines.append(
            f"HSSAL at {h['label_fraction'][-1]:.1%} = {h['pct_of_full_supervision'][-1]:.1f}% "
            "of full supervision (goal >= 95%)"
        )
    for other in BASELINES:
        if other not in diffs or not h:
            continue
        d = diffs[other]
        bad = [
            f"{h['label_fraction'][i]:.1%}"
            for i in range(1, len(d["diff_mean"]))
            if (d["diff_mean"][i] < 0 if other != "supervised_hal" else d["diff_mean"][i] <= 0)
        ]
        close = [
            f"{h['label_fraction'][i]:.1%}" for i in range(1, len(d["diff_mean"])) if d["within_one_std"][i]
        ]
        op = ">" if other == "supervised_hal" else ">="
        verdict = "yes" if not bad else f"NO at {', '.join(bad)}"
        note = f" (margin within one std at {', '.join(close)})" if close else ""
        lines.append(f"HSSAL {op} {other} after the cold start: {verdict}{note}")
    return lines


def dataset_name(data: str, name: str | None = None) -> str:
    """The dataset's name for the report: ``name`` if given, else the ``--data`` folder's name."""
    if name and name.strip():
        return name.strip()
    folder = str(data).rstrip("/").rsplit("/", 1)[-1]  # local path or URI
    if folder in ("", ".", ".."):
        folder = Path(data).resolve().name
    return folder or str(data)


def evaluated_on(val_fraction: float, n_eval: int) -> str:
    """Which split every reported number was measured on, with its size."""
    if val_fraction:
        return f"validation split ({val_fraction:.0%} of train, {n_eval} images)"
    return f"test split ({n_eval} images)"


def eval_split_size(base: Any) -> int:
    """Images in the split the loop evaluates on (``data.eval_split``), as the runs split the data."""
    from hssal_ray.data.catalog import scan

    d = base.data
    cat = scan(d.root, test_fraction=d.test_fraction, seed=0, val_fraction=d.val_fraction)
    return cat.split_table(d.eval_split).num_rows


def plot_title(result: dict[str, Any]) -> str:
    """The plot's title: the dataset and the split measured on."""
    return f"{result['dataset']} label efficiency, product loop ({result['evaluated_on']})"


def report_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a finished benchmark ``result``."""
    s, diffs = result["summary"], result["paired_vs_hssal"]
    fracs = (
        [
            f"{f:.1%} ({n})"
            for f, n in zip(s["hssal"]["label_fraction"], s["hssal"]["num_labeled"], strict=True)
        ]
        if "hssal" in s
        else []
    )
    md = [
        f"# Label efficiency on {result['dataset']} (product loop, {result['profile_name']} profile)",
        "",
        f"- command: `{result['command']}`",
        f"- profile: `{result['profile']}` ({result['recipe']})",
        f"- evaluated on: {result['evaluated_on']}; wall time {result['wall_s'] / 60:.1f} min "
        f"(one-time encode {result['encode_s']:.0f} s) on {result['device']['summary']}",
        "",
        "Accuracy, mean ± std over seeds, at each label fraction "
        "(each cell: the loop's own `metrics.jsonl`).",
        "",
        "| method | seeds | " + " | ".join(fracs) + " | % of full at the end |",
        "|---|---|" + "---|" * len(fracs) + "---|",
    ]
    for method, m in s.items():
        if method == "full_supervision":
            continue
        cells = [f"{a:.3f} ± {d:.3f}" for a, d in zip(m["accuracy_mean"], m["accuracy_std"], strict=True)]
        pct = m.get("pct_of_full_supervision", [float("nan")])[-1]
        md.append(f"| {method} | {len(m['seeds'])} | " + " | ".join(cells) + f" | {pct:.1f}% |")
    if "full_supervision" in s:
        f = s["full_supervision"]
        md.append(
            f"| full_supervision ({f['num_labeled'][-1]} labels) | {len(f['seeds'])} | "
            + " | ".join([""] * max(len(fracs) - 1, 0))
            + f" | {f['accuracy_mean'][-1]:.3f} ± {f['accuracy_std'][-1]:.3f} | 100% |"
        )
    md += [
        "",
        "Paired per-seed difference HSSAL minus each method (mean ± std; wins = seeds where HSSAL is ahead):",
        "",
    ]
    md += ["| vs | " + " | ".join(fracs) + " |", "|---|" + "---|" * len(fracs)]
    for other, d in diffs.items():
        cells = [
            f"{100 * a:+.1f} ± {100 * b:.1f} ({w}/{len(d['seeds'])}){' ~' if c else ''}"
            for a, b, w, c in zip(d["diff_mean"], d["diff_std"], d["wins"], d["within_one_std"], strict=True)
        ]
        md.append(f"| {other} | " + " | ".join(cells) + " |")
    md += [
        "",
        "`~`: the margin is inside one standard deviation.",
        "",
        "Reported (EMA) minus online weights' accuracy, points, mean over seeds, per round "
        "(issue 13 diagnostic; both from each round's `metrics.jsonl`):",
        "",
        "| method | " + " | ".join(fracs) + " |",
        "|---|" + "---|" * len(fracs),
        *[
            f"| {method} | "
            + " | ".join(
                f"{100 * (a - o):+.1f}"
                for a, o in zip(m["accuracy_mean"], m.get("online_accuracy_mean", []), strict=False)
            )
            + " |"
            for method, m in s.items()
            if method != "full_supervision"
        ],
        "",
        "Checks:",
        *[f"- {c}" for c in result["checks"]],
    ]
    return "\n".join(md) + "\n"


def efficiency_figure(result: dict[str, Any]) -> Any:
    """The learning curves of every method (a matplotlib Figure, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result["summary"]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, m in s.items():
        x = [100 * f for f in m["label_fraction"]]
        if method == "full_supervision":
            ax.axhline(m["accuracy_mean"][-1], color="k", ls="--", lw=1, label="full supervision")
            continue
        ax.errorbar(
            x,
            m["accuracy_mean"],
            yerr=m["accuracy_std"],
            marker="o",
            ms=3,
            capsize=2,
            lw=2.5 if method == "hssal" else 1.1,
            label=method,
        )
    ax.set_xlabel("% of training labels")
    ax.set_ylabel("accuracy (" + ("validation" if "val" in result["evaluated_on"] else "test") + ")")
    ax.set_title(plot_title(result), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def write_outputs(out_dir: Path, tag: str, result: dict[str, Any]) -> None:
    """``<tag>.json``, ``<tag>.md`` and ``<tag>.png`` in ``out_dir``; prints the Markdown."""
    text = report_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / f"{tag}.md").write_text(text)
    efficiency_figure(result).savefig(out_dir / f"{tag}.png", dpi=120)
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.label_efficiency", description=__doc__.split("\n")[0]
    )
    add_product_arguments(p, "label_efficiency")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--dataset-name", default=None, help="name in the report (default: --data's folder name)")
    args = p.parse_args(argv)
    known = [*SSL_METHODS, *SUPERVISED_METHODS, "full_supervision"]
    bad = [m for m in args.methods or [] if m not in known]
    if bad:  # e.g. key=value overrides written after --methods, which takes every word that follows
        p.error(
            f"unknown method(s) {bad}; known: {known}. Put key=value overrides before --methods "
            "(it takes every word after it)"
        )
    t0 = time.perf_counter()
    base, run_dir, encode_s, n_train = start(args)
    n_eval = eval_split_size(base)
    seeds = list(range(args.seeds))
    want = set(args.methods or known)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    kw = dict(num_cpus=2 * args.concurrent, concurrent=args.concurrent)
    for group, methods, ssl in (("ssl", SSL_METHODS, True), ("supervised", SUPERVISED_METHODS, False)):
        methods = {m: s for m, s in methods.items() if m in want}
        if not methods:
            continue
        grid = {"query.strategy": list(methods.values()), "seed": seeds}
        got = run_grid(base, f"{args.tag}_{group}", run_dir, grid, fixed={"ssl.enabled": ssl}, **kw)
        for m, strat in methods.items():
            results[m] = {s: got[(strat, s)] for s in seeds}
    if "full_supervision" in want:
        fixed = {
            "ssl.enabled": False,
            "loop.initial_labeled": labels_setting(base, 1.0, n_train),  # every training label
            "loop.rounds": 0,
            "loop.total_budget": 0,
            "loop.cold_start": "random",
        }
        got = run_grid(base, f"{args.tag}_full", run_dir, {"seed": seeds}, fixed=fixed, **kw)
        results["full_supervision"] = {s: got[(s,)] for s in seeds}
    summary = collect(results, n_train)
    diffs = paired(summary)
    ssl_cfg = base.ssl
    result = {
        "benchmark": args.tag,
        "dataset": dataset_name(args.data, args.dataset_name),
        "data": args.data,
        "profile_name": Path(args.profile).stem,
        "profile": args.profile,
        "recipe": (
            f"{ssl_cfg.model} {ssl_cfg.weights or 'from scratch'}, {base.data.image_size} px, "
            f"finetune={ssl_cfg.finetune}, {ssl_cfg.steps_per_round} steps/round, batch {ssl_cfg.batch_size}"
            f"+{ssl_cfg.batch_size * ssl_cfg.uratio}, p_cutoff {ssl_cfg.p_cutoff}, {ssl_cfg.threshold_mode}, "
            f"query {base.query.strategy} budget {base.query.budget}, cold start {base.loop.cold_start}; "
            f"overrides {args.overrides}"
        ),
        "command": command_line("benchmarks.label_efficiency", argv),
        "evaluated_on": evaluated_on(args.val_fraction, n_eval),
        "n_train": n_train,
        "n_eval": n_eval,
        "seeds": seeds,
        "summary": summary,
        "paired_vs_hssal": diffs,
        "encode_s": encode_s,
        "wall_s": time.perf_counter() - t0,
        "device": describe_machine(),
    }
    result["checks"] = checks(summary, diffs)
    write_outputs(Path(args.out), args.tag, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
