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
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, describe_machine
from benchmarks._efficiency_report import (  # noqa: F401  (efficiency_figure: re-exported)
    dataset_name,
    efficiency_figure,
    evaluated_on,
    finish,
    render,
    write_outputs,
)
from benchmarks._product import add_product_arguments, labels_setting, run_grid, start, store_identity

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


def eval_split_size(base: Any) -> int:
    """Images in the split the loop evaluates on (``data.eval_split``), as the runs split the data."""
    from hssal_ray.data.catalog import scan

    d = base.data
    cat = scan(d.root, test_fraction=d.test_fraction, seed=0, val_fraction=d.val_fraction)
    return cat.split_table(d.eval_split).num_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.label_efficiency", description=__doc__.split("\n")[0]
    )
    add_product_arguments(p, "label_efficiency")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--dataset-name", default=None, help="name in the report (default: --data's folder name)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="run seeds first-seed .. first-seed + seeds - 1 (e.g. more seeds for an earlier result)",
    )
    p.add_argument(
        "--render",
        metavar="RESULT_JSON",
        default=None,
        help="run nothing: rebuild the report (.md, .png, derived .json fields) of a finished result file",
    )
    args = p.parse_args(argv)
    if args.render:
        if not Path(args.render).is_file():
            p.error(f"--render: no result file {args.render}")
        print(render(Path(args.render))["checks"])
        return 0
    known = [*SSL_METHODS, *SUPERVISED_METHODS, "full_supervision"]
    bad = [m for m in args.methods or [] if m not in known]
    if bad:  # e.g. key=value overrides written after --methods, which takes every word that follows
        p.error(
            f"unknown method(s) {bad}; known: {known}. Put key=value overrides before --methods "
            "(it takes every word after it)"
        )
    t0 = time.perf_counter()
    base, run_dir, encode_s, n_train = start(args)
    store = store_identity(base, run_dir)  # which embeddings, bit for bit (compare_seeds reads it)
    n_eval = eval_split_size(base)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
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
        "encode_s": encode_s,
        "store": store,
        "wall_s": time.perf_counter() - t0,
        "device": describe_machine(),
    }
    finish(result)
    write_outputs(Path(args.out), args.tag, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
