"""FixMatch vs supervised-only on the *same* labels, steps and seed (real UCM, issue 4).

    python -m benchmarks.ssl_vs_supervised --data ../shared/data/ucm --profile cpu --seeds 3 \
        --jobs 2 --out benchmarks/results

One training run per arm and seed, from the same initial weights:

* ``supervised``: the labeled subset only (``ssl.enabled=false``, so ``lambda_u`` plays no part);
* ``fixmatch`` (and optionally ``flexmatch`` / ``freematch``): the same labeled subset, in the same
  order, plus every other training image as unlabeled data (the loss adds ``lambda_u`` x the
  pseudo-label cross-entropy on strong views);
* ``full_supervision``: every training label, supervised, the same number of steps (upper bound).

The labeled subset is a seeded, class-stratified ``--fraction`` of the training split
(``round(fraction x n)`` images, spread over the classes by largest remainder, at least one per
class); it depends on the seed only, never on the arm. The labeled mini-batches are drawn from
the same seeded stream in every arm, so the only difference between ``supervised`` and
``fixmatch`` is the unlabeled term. Evaluation: the EMA model on the test split (or, with
``--val-fraction``, on a held-out part of the training split: that is how the recipe was tuned;
the test split is then never read).

The training code is the library's: ``hssal_ray.ssl.steps.train_step`` (FixMatch, EMA,
thresholds) via ``benchmarks.label_efficiency.Trainer`` (images decoded once, in-process; see that
module for why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.label_efficiency import (
    REPO,
    Trainer,
    add_run_arguments,
    evaluated_on,
    load_images,
    map_jobs,
    setup_run,
)

#: arm -> (semi-supervised?, threshold mode or None, all labels?)
ARMS: dict[str, tuple[bool, str | None, bool]] = {
    "supervised": (False, None, False),
    "fixmatch": (True, "fixed", False),
    "flexmatch": (True, "flexmatch", False),
    "freematch": (True, "freematch", False),
    "full_supervision": (False, None, True),
}
DEFAULT_ARMS = ("supervised", "fixmatch", "full_supervision")


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices: ``round(fraction * n)`` seeded random rows, spread over the classes.

    Every class gets ``floor(fraction * n_c)`` rows (at least one); the rows left to reach the total
    go, one each, to the classes with the largest remainders (ties broken by the seed). So the
    subset is the requested fraction of the split, not a per-class rounding of it.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 0x5EED])
    classes, counts = np.unique(y, return_counts=True)
    share = fraction * counts
    take = np.maximum(1, np.floor(share)).astype(np.int64)
    extra = max(0, round(fraction * len(y)) - int(take.sum()))
    order = np.lexsort((rng.random(len(classes)), -(share - np.floor(share))))  # largest remainder first
    take[order[:extra]] += 1
    take = np.minimum(take, counts)
    picked = [
        rng.choice(np.flatnonzero(y == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def run_arm(base: Any, arm: str, data: dict, fraction: float, steps: int, seed: int, device: str) -> dict:
    """Train one arm for ``steps`` steps; EMA accuracy on the evaluation split and training diagnostics."""
    from hssal_ray.ssl.trainer import derive_seed

    ssl_on, mode, full = ARMS[arm]
    ssl = replace(base.ssl, enabled=ssl_on, steps_per_round=steps)
    if mode is not None:
        ssl = replace(ssl, threshold_mode=mode)
    cfg = replace(base, ssl=ssl)
    ids, x, y = data["train"]
    _, xt, yt = data["test"]
    labeled = np.arange(len(ids)) if full else stratified_subset(y, fraction, seed)
    pool = np.setdiff1d(np.arange(len(ids)), labeled)
    t0 = time.perf_counter()
    # the same initial weights and the same labeled-batch stream for every arm of a seed
    trainer = Trainer(cfg, len(data["classes"]), device, derive_seed(seed, "init") % 2**31)
    m = trainer.fit(x, y, labeled, pool, steps, derive_seed(seed, 0, "train") % 2**63)
    if not ssl_on:  # no unlabeled term: its diagnostics would read as zeros
        m = {k: v for k, v in m.items() if k == "sup_loss"}
    pred = trainer.predict(xt)[1].argmax(1)
    acc = float((pred == yt).mean())
    row = {
        "arm": arm,
        "seed": seed,
        "num_labeled": int(len(labeled)),
        "num_unlabeled_used": int(len(pool)) if ssl_on else 0,
        "labeled_digest": int(np.bitwise_xor.reduce(labeled * 2654435761 % 2**32)) if len(labeled) else 0,
        "steps": steps,
        "accuracy": acc,
        "train_s": time.perf_counter() - t0,
        **{k: float(v) for k, v in m.items()},  # second-half means: losses, mask rate, pseudo-label acc
    }
    print(
        f"  {arm:16s} seed {seed}: {len(labeled):4d} labels  acc {acc:.4f}  "
        f"mask {row.get('mask_rate', float('nan')):.2f}  "
        f"pl-acc {row.get('pseudo_label_acc_all', float('nan')):.2f}"
        f"  ({row['train_s']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def summarize(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in rows)]:  # table order: supervised first
        rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        accs = np.asarray([r["accuracy"] for r in rs])
        out[arm] = {
            "seeds": [r["seed"] for r in rs],
            "num_labeled": rs[0]["num_labeled"],
            "accuracy": accs.tolist(),
            "accuracy_mean": float(accs.mean()),
            "accuracy_std": float(accs.std()),
            "mask_rate_mean": float(np.mean([r.get("mask_rate", np.nan) for r in rs])),
            "pseudo_label_acc_mean": float(np.mean([r.get("pseudo_label_acc_all", np.nan) for r in rs])),
            "train_s_mean": float(np.mean([r["train_s"] for r in rs])),
        }
    return out


def checks(summary: dict[str, Any]) -> list[str]:
    """Each SSL arm against supervised on the same labels: mean gain and per-seed wins."""
    sup = summary.get("supervised")
    out = []
    for arm in ("fixmatch", "flexmatch", "freematch"):
        s = summary.get(arm)
        if not (s and sup):
            continue
        paired = dict(zip(sup["seeds"], sup["accuracy"], strict=True))
        diffs = [a - paired[sd] for sd, a in zip(s["seeds"], s["accuracy"], strict=True) if sd in paired]
        wins = sum(d > 0 for d in diffs)
        gain = s["accuracy_mean"] - sup["accuracy_mean"]
        out.append(
            f"{arm} > supervised on the same labels: {'yes' if gain > 0 else 'NO'} "
            f"(mean {s['accuracy_mean']:.3f} vs {sup['accuracy_mean']:.3f}, {100 * gain:+.1f} points; "
            f"ahead on {wins}/{len(diffs)} seeds)"
        )
    return out


def write_outputs(out_dir: Path, result: dict[str, Any], tag: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{tag}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out_dir / f"{tag}.json")
    p, s = result["profile"], result["summary"]
    md = [
        f"# FixMatch vs supervised on the same labels, UCM ({result['profile_name']} profile)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Recipe: {p['model']} from scratch, {p['image_size']} px, {p['steps']} steps for every arm "
        f"(batch {p['batch_size']} labeled + {p['batch_size'] * p['uratio']} unlabeled, "
        f"p_cutoff {p['p_cutoff']}, lambda_u {p['lambda_u']}, lr {p['lr']}, EMA {p['ema_m']}). "
        f"Labels: a seeded class-stratified {100 * result['fraction']:.0f}% of the "
        f"{result['n_train']} training images, identical across arms of a seed; the SSL arms add the "
        f"other training images unlabeled. Evaluation: {result['evaluated_on']}. "
        f"Wall time {result['wall_s'] / 60:.1f} min on {result['device']}.",
        "",
        "| arm | labels | seeds | accuracy (mean ± std) | per seed | mask rate | pseudo-label acc |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for arm, m in s.items():
        per = " / ".join(f"{a:.3f}" for a in m["accuracy"])
        mask = "" if np.isnan(m["mask_rate_mean"]) else f"{m['mask_rate_mean']:.2f}"
        pla = "" if np.isnan(m["pseudo_label_acc_mean"]) else f"{m['pseudo_label_acc_mean']:.2f}"
        md.append(
            f"| {arm} | {m['num_labeled']} | {len(m['seeds'])} | "
            f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f} | {per} | {mask} | {pla} |"
        )
    md += [
        "",
        "Mask rate and pseudo-label accuracy (on the unlabeled images, ground truth used for the "
        "diagnostic only) are means over the second half of training.",
        "",
        "Checks: " + ("; ".join(result["checks"]) or "none (no SSL or no supervised arm)"),
        "",
    ]
    tmp = out_dir / f".{tag}.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out_dir / f"{tag}.md")
    print("\n".join(md))


_SHARED: tuple[Any, ...] = ()


def _run_one(task: tuple[str, int]) -> dict[str, Any]:
    import torch

    cfg, data, fraction, steps, device, threads = _SHARED
    torch.set_num_threads(threads)
    return run_arm(cfg, task[0], data, fraction, steps, task[1], device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "ssl_vs_supervised", "arms run in parallel processes (CPU)")
    p.add_argument("--fraction", type=float, default=0.08, help="labeled fraction of the training split")
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per arm (default: the recipe's total budget)"
    )
    p.add_argument("--seeds", type=int, default=3, help="how many seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (more seeds later)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS))
    args = p.parse_args(argv)

    cfg, cfg_path, device, threads = setup_run(args)
    # default: as many steps as the closed loop trains in all (rounds + 1 trainings)
    steps = args.steps or cfg.ssl.steps_per_round * (cfg.loop.rounds + 1)
    t_all = time.perf_counter()
    data = load_images(cfg, args.data, args.val_fraction)
    n_train = len(data["train"][0])
    print(
        f"[ssl_vs_supervised] {n_train} train / {len(data['test'][0])} eval images, {args.fraction:.0%} "
        f"labeled, {steps} steps, arms {args.arms}, device {device}",
        file=sys.stderr,
        flush=True,
    )
    # the slow (SSL) arms first, so parallel jobs finish together
    todo = sorted(
        ((a, s) for s in range(args.first_seed, args.first_seed + args.seeds) for a in args.arms),
        key=lambda t: (not ARMS[t[0]][0], t[1]),
    )
    global _SHARED
    _SHARED = (cfg, data, args.fraction, steps, device, threads)
    rows = map_jobs(_run_one, todo, args.jobs, device)
    summary = summarize(rows)
    result = {
        "benchmark": "ssl_vs_supervised",
        "command": "python -m benchmarks.ssl_vs_supervised "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"{platform.machine()} {device} ({os.cpu_count()} cores, "
        f"{args.jobs} jobs x {threads} threads)",
        "profile_name": args.profile,
        "profile": {
            "config": os.path.relpath(cfg_path, REPO),
            "overrides": args.overrides,
            "model": cfg.ssl.model,
            "image_size": cfg.data.image_size,
            "steps": steps,
            "batch_size": cfg.ssl.batch_size,
            "uratio": cfg.ssl.uratio,
            "p_cutoff": cfg.ssl.p_cutoff,
            "lambda_u": cfg.ssl.lambda_u,
            "lr": cfg.ssl.lr,
            "ema_m": cfg.ssl.ema_m,
        },
        "evaluated_on": evaluated_on(args.val_fraction),
        "fraction": args.fraction,
        "n_train": n_train,
        "bad_samples": data["bad_train"] + data["bad_test"],
        "wall_s": time.perf_counter() - t_all,
        "summary": summary,
        "runs": rows,
    }
    result["checks"] = checks(summary)
    write_outputs(Path(args.out), result, args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
