"""FixMatch vs supervised on the same 8% of UCM's training labels, plus full supervision.

Every run goes through the real loop (``LoopRunner`` with ``loop.rounds=0``: one Ray Train
fit on the cold-start set, then evaluation on the held-out test split), so the benchmark
measures the code users run. The 8% set is the same stratified sample (``loop.cold_start=
stratified``: a simulation-only option) for both methods; steps, batch size, model and seed
are identical; only ``ssl.enabled`` differs.

    python -m benchmarks.ssl_ucm                       # the standard set (CPU profile)
    python -m benchmarks.ssl_ucm --steps 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _run(name: str, overrides: list[str], work: Path) -> dict:
    from hssal_ray.config import load_config
    from hssal_ray.loop.runner import LoopRunner, read_metrics

    cfg = load_config(str(REPO / "configs" / "ucm_cpu.yaml"), [*overrides, f"loop.run_dir={work}", f"loop.name={name}"])
    t0 = time.perf_counter()
    LoopRunner(cfg).run()
    m = read_metrics(cfg.run_path)[-1]
    m["wall_s_total"] = time.perf_counter() - t0
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ucm"))
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: ucm_cpu.yaml's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--fraction", type=float, default=0.08)
    p.add_argument("--work", default=str(REPO / "runs" / "bench_ssl_ucm"))
    p.add_argument("--out", default=str(RESULTS / "ssl_ucm.json"))
    p.add_argument("--skip-full", action="store_true", help="skip the fully-supervised reference")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from hssal_ray.cli import setup_logging

    setup_logging()
    n_train = 1680  # UCM 80/20 split
    n_lab = round(args.fraction * n_train)
    common = [f"data.root={args.data}", "loop.rounds=0", "loop.cold_start=stratified", "loop.report=false"]
    if args.steps:
        common.append(f"ssl.steps_per_round={args.steps}")
    work = Path(args.work)
    rows = []
    for seed in args.seeds:
        runs = {
            "supervised_8pct": [f"loop.initial_labeled={n_lab}", "ssl.enabled=false"],
            "fixmatch_8pct": [f"loop.initial_labeled={n_lab}", "ssl.enabled=true"],
        }
        if not args.skip_full:
            runs["full_supervision"] = [f"loop.initial_labeled={n_train}", "ssl.enabled=false"]
        for method, ov in runs.items():
            m = _run(f"{method}_s{seed}", [*common, *ov, f"seed={seed}"], work)
            rows.append({
                "method": method, "seed": seed, "num_labeled": m["num_labeled"],
                "label_fraction": m["label_fraction"], "test_accuracy": m["test_accuracy"],
                "mask_rate": m.get("mask_rate"), "pseudo_label_acc": m.get("pseudo_label_acc"),
                "steps": m.get("step"), "train_s": m.get("wall_s", {}).get("train"), "wall_s": m["wall_s_total"],
            })
            print(f"{method:18s} seed {seed}: acc {m['test_accuracy']:.4f} ({m['num_labeled']} labels)", flush=True)
    from hssal_ray.config import load_config

    base = load_config(str(REPO / "configs" / "ucm_cpu.yaml"), [f"data.root={args.data}"])
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        accs = [r["test_accuracy"] for r in rows if r["method"] == method]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        summary[method] = {"accuracy_mean": mean, "accuracy_std": std, "n_seeds": len(accs)}
    out = {
        "benchmark": "ssl_ucm",
        "command": "python -m benchmarks.ssl_ucm " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"{platform.machine()} CPU x{os.cpu_count()}, no GPU",
        "profile": {"config": "configs/ucm_cpu.yaml", "model": base.ssl.model, "image_size": base.data.image_size,
                    "steps": args.steps or base.ssl.steps_per_round, "batch_size": base.ssl.batch_size,
                    "uratio": base.ssl.uratio, "p_cutoff": base.ssl.p_cutoff, "labeled_8pct": n_lab},
        "summary": summary,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    md = ["| method | labels | test accuracy (mean ± std) | seeds |", "|---|---|---|---|"]
    for method, s in summary.items():
        lab = next(r["num_labeled"] for r in rows if r["method"] == method)
        md.append(f"| {method} | {lab} | {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f} | {s['n_seeds']} |")
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + f"\n\nCommand: `{out['command']}`\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
