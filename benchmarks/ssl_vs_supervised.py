"""FixMatch against supervised training on identical labels, measured on the product (no active learning).

    python -m benchmarks.ssl_vs_supervised                 # 8% of UCM's training labels, 3 seeds
    python -m benchmarks.ssl_vs_supervised --seeds 5 --fraction 0.04

Each arm is one run of the real loop with ``loop.rounds=0``: the round-0 labeled set is the loop's
``stratified`` cold start (the same for both arms of a seed, different across seeds), then one
training round and the evaluation. The arms differ only in ``ssl.enabled``; full supervision (every
training label) is the reference. The runs are trials of a Ray Tune grid (``hssal_ray.tune``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, describe_machine, md_table
from benchmarks._product import add_product_arguments, labels_setting, run_grid, start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ssl_vs_supervised", description=__doc__.split("\n")[0]
    )
    add_product_arguments(p, "ssl_vs_supervised")
    p.add_argument("--fraction", type=float, default=0.08, help="labeled fraction of the training split")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    base, run_dir, _, n_train = start(args)
    n_lab = round(args.fraction * n_train)
    seeds = list(range(args.seeds))
    fixed = {"loop.rounds": 0, "loop.total_budget": 0, "loop.cold_start": "stratified"}
    got = run_grid(
        base,
        f"{args.tag}_arms",
        run_dir,
        {"ssl.enabled": [False, True], "seed": seeds},
        fixed={**fixed, "loop.initial_labeled": labels_setting(base, args.fraction, n_train)},
    )
    full = run_grid(
        base,
        f"{args.tag}_full",
        run_dir,
        {"seed": seeds},
        fixed={
            **fixed,
            "loop.initial_labeled": labels_setting(base, 1.0, n_train),
            "ssl.enabled": False,
            "loop.cold_start": "random",
        },
    )
    acc: dict[str, list[float]] = {"supervised": [], "fixmatch": [], "full_supervision": []}
    mask: list[float] = []
    for s in seeds:
        acc["supervised"].append(got[(False, s)][-1]["test_accuracy"])
        acc["fixmatch"].append(got[(True, s)][-1]["test_accuracy"])
        mask.append(got[(True, s)][-1].get("mask_rate", float("nan")))
        acc["full_supervision"].append(full[(s,)][-1]["test_accuracy"])
    diff = np.array(acc["fixmatch"]) - np.array(acc["supervised"])
    rows = [
        {
            "arm": k,
            "labels": n_train if k == "full_supervision" else n_lab,
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
            "per_seed": " ".join(f"{x:.3f}" for x in v),
        }
        for k, v in acc.items()
    ]
    result: dict[str, Any] = {
        "benchmark": args.tag,
        "command": command_line("benchmarks.ssl_vs_supervised", argv),
        "profile": args.profile,
        "fraction": args.fraction,
        "num_labeled": n_lab,
        "seeds": seeds,
        "accuracy": acc,
        "fixmatch_minus_supervised": {
            "mean": float(diff.mean()),
            "std": float(diff.std()),
            "wins": int((diff > 0).sum()),
        },
        "fixmatch_mask_rate": mask,
        "evaluated_on": "validation split" if args.val_fraction else "test split",
        "wall_s": time.perf_counter() - t0,
        "device": describe_machine(),
    }
    md = (
        f"# FixMatch vs supervised on identical labels (product loop, `{args.profile}`)\n\n"
        f"- command: `{result['command']}`\n- {n_lab} labels ({args.fraction:.0%} of {n_train}), "
        f"evaluated on the {result['evaluated_on']}, {len(seeds)} seeds, "
        f"wall {result['wall_s'] / 60:.1f} min\n\n"
        + md_table(rows, ["arm", "labels", "mean", "std", "per_seed"])
        + f"\n\nFixMatch minus supervised, paired: {100 * diff.mean():+.1f} ± {100 * diff.std():.1f} points, "
        f"ahead on {int((diff > 0).sum())}/{len(seeds)} seeds; FixMatch mask rate {np.nanmean(mask):.2f}.\n"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{args.tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
