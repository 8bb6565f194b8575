"""Where a round's seconds go: compute (inside training steps and model forwards) against fixed overhead.

    python -m benchmarks.round_overhead                  # the demo's data, 3 rounds, executor ray vs driver
    python -m benchmarks.round_overhead --steps 60 --executors driver
    python -m benchmarks.round_overhead --baseline /path/to/old/checkout   # + the same run on older code

Runs the real CLI (``python -m hssal_ray.loop``, embedded demo data) once per ``resources.executor``
and splits each round's stage wall times (``metrics.jsonl``) using what the training loop measures
itself (``train_metrics.json``): seconds inside ``train_step``, seconds waiting for the Ray Data
stream, and the wall-clock times the worker loop started and ended. Training overhead is then
split into *start* (stage start -> worker loop start: Ray Train worker group, model build, dataset
set-up), *data wait*, and *end* (worker loop end -> stage end: checkpoint report and copy, Ray
Train teardown). Evaluation and scoring compute is the model's forward time for the same number of
images, measured in this process with the same model and batch size; the rest of those stages is
overhead (Ray Data pipeline and actor start, model load, decoding, writing).

``--baseline DIR`` also runs the CLI of another checkout of this repository (for example the commit
before the overhead work) with the same steps, rounds, ``ssl.uratio`` and data. Older code does not
measure inside its workers, so that row gives stage wall times only (the "before" of the README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import md_table, setup_logging, write_result

STAGES = ("train", "evaluate", "score", "query", "label")


def forward_seconds_per_image(cfg: Any, n: int = 256) -> float:
    """The evaluation model's forward time per image on this machine (one thread, the eval batch size)."""
    import torch

    from hssal_ray.models import model_from_config

    torch.set_num_threads(1)
    model = model_from_config(cfg, 4, with_weights=False).eval()
    x = torch.randn(cfg.ssl.eval_batch_size, cfg.data.bands, cfg.data.image_size, cfg.data.image_size)
    with torch.inference_mode():
        model.forward_features_logits(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < n:
            model.forward_features_logits(x)
            done += x.shape[0]
    return (time.perf_counter() - t0) / done


def run_loop(executor: str, steps: int, rounds: int, run_dir: Path) -> tuple[list[dict], list[dict], float]:
    name = f"overhead_{executor}"
    shutil.rmtree(run_dir / name, ignore_errors=True)  # a finished run there would resume, not re-measure
    cmd = [
        sys.executable,
        "-m",
        "hssal_ray.loop",
        f"loop.run_dir={run_dir}",
        f"loop.name={name}",
        f"resources.executor={executor}",
        f"ssl.steps_per_round={steps}",
        f"loop.rounds={rounds}",
        "loop.report=false",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    run = run_dir / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [json.loads((run / f"round_{r['round']:03d}" / "train_metrics.json").read_text()) for r in rows]
    return rows, train, wall


def run_baseline(checkout: Path, steps: int, rounds: int, uratio: int, run_dir: Path) -> dict[str, Any]:
    """Stage wall times of another checkout's CLI with the same settings (no in-worker timing there)."""
    import os

    name = "overhead_baseline"
    shutil.rmtree(run_dir / name, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "hssal_ray.loop",
        f"loop.run_dir={run_dir.resolve()}",
        f"loop.name={name}",
        f"ssl.steps_per_round={steps}",
        f"ssl.uratio={uratio}",
        f"loop.rounds={rounds}",
        "loop.report=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=checkout, env=env)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
    table = []
    for r in rows:
        w = r.get("wall_s", {})
        table.append(
            {
                "round": r["round"],
                "total_s": round(
                    sum(w.get(k, 0.0) for k in ("train", "evaluate", "score", "query", "label")), 1
                ),
                **{f"{k}_s": round(w[k], 1) for k in ("train", "evaluate", "score", "query") if k in w},
                "test_accuracy": round(r["test_accuracy"], 3),
            }
        )
    return {"rounds": table, "wall_s": wall}


def breakdown(rows: list[dict], train: list[dict], fwd: float, n_test: int, n_scored: int) -> list[dict]:
    out = []
    for r, t in zip(rows, train, strict=True):
        w = r.get("wall_s", {})
        start = t["worker_started_at"] - t["stage_started_at"]
        end = t["stage_ended_at"] - t["worker_ended_at"]
        ev_c, sc_c = fwd * n_test * 2, (fwd * n_scored if "score" in w else 0.0)  # eval runs EMA + online
        compute = t["step_s"] + ev_c + sc_c + w.get("query", 0.0)
        total = sum(w.get(k, 0.0) for k in ("train", "evaluate", "score", "query", "label"))
        out.append(
            {
                "round": r["round"],
                "total_s": round(total, 1),
                "compute_s": round(compute, 1),
                "overhead_s": round(total - compute, 1),
                "train_steps_s": round(t["step_s"], 1),
                "train_start_s": round(start, 1),
                "train_data_wait_s": round(t["data_wait_s"], 1),
                "train_end_s": round(end, 1),
                "evaluate_overhead_s": round(w.get("evaluate", 0.0) - ev_c, 1),
                "score_overhead_s": round(w.get("score", 0.0) - sc_c, 1) if "score" in w else None,
                "test_accuracy": round(r["test_accuracy"], 3),
                "test_accuracy_online": round(r.get("test_accuracy_online", float("nan")), 3),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.round_overhead", description=__doc__.split("\n")[0]
    )
    p.add_argument("--executors", nargs="+", default=["ray", "driver"])
    p.add_argument("--steps", type=int, default=None, help="ssl.steps_per_round (default: the demo's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--run-dir", default="runs/benchmarks/round_overhead")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--baseline", type=Path, default=None, help="another checkout, same settings")
    args = p.parse_args(argv)
    setup_logging()
    from hssal_ray.config import load_config

    cfg = load_config(None, [])
    steps = args.steps or cfg.ssl.steps_per_round
    fwd = forward_seconds_per_image(cfg)
    n = cfg.data.synthetic_classes * cfg.data.synthetic_per_class
    n_test = round(n * cfg.data.test_fraction)
    results, md = {}, []
    cols = [
        "round",
        "total_s",
        "compute_s",
        "overhead_s",
        "train_steps_s",
        "train_start_s",
        "train_data_wait_s",
        "train_end_s",
        "evaluate_overhead_s",
        "score_overhead_s",
        "test_accuracy",
        "test_accuracy_online",
    ]
    for ex in args.executors:
        rows, train, wall = run_loop(ex, steps, args.rounds, Path(args.run_dir))
        table = breakdown(rows, train, fwd, n_test, n - n_test)
        mean_over = sum(t["overhead_s"] for t in table[1:]) / max(len(table) - 1, 1)
        results[ex] = {"rounds": table, "wall_s": wall, "mean_overhead_after_round0_s": mean_over}
        md += [
            f"### `resources.executor={ex}` ({wall:.0f} s for the whole CLI call; mean fixed overhead of "
            f"rounds 1+: {mean_over:.1f} s)",
            "",
            md_table(table, cols),
            "",
        ]
    if args.baseline is not None:
        rev = subprocess.run(
            ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        base = run_baseline(args.baseline, steps, args.rounds, cfg.ssl.uratio, Path(args.run_dir))
        base["commit"] = rev.stdout.strip()
        results["baseline"] = base
        md += [
            f"### Before: commit `{base['commit']}`, same settings ({base['wall_s']:.0f} s for the CLI call; "
            "stage wall times only, that code does not time inside its workers)",
            "",
            md_table(base["rounds"], list(base["rounds"][0])),
            "",
        ]
    text = (
        f"The embedded demo's data ({n} synthetic 32 px images, {cfg.ssl.model}), {steps} steps a round, "
        f"{args.rounds + 1} rounds; forward time {1000 * fwd:.2f} ms per image (one thread). "
        "Round 0 also pays the first Ray Data execution and imports in the workers.\n\n" + "\n".join(md)
    )
    write_result(
        "round_overhead",
        {"steps": steps, "forward_s_per_image": fwd, "results": results},
        text,
        module="benchmarks.round_overhead",
        out_dir=args.out,
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
