"""``python -m hssal_ray.tune --config configs/sweep_demo.yaml [key=value ...] [--resume] [--smoke-test]``."""

from __future__ import annotations

import argparse
import sys

from hssal_ray.errors import HSSALError

SMOKE_SWEEP_OVERRIDES = ["data.root=null", "loop.report=false", "loop.total_budget=12", "tune.num_samples=1"]
"""Added to the loop's smoke settings for ``--smoke-test``: tiny synthetic data, 6 -> 12 labels."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hssal_ray.tune",
        description=(
            "Sweep the HSSAL closed loop with Ray Tune: each trial runs the whole loop (simulated "
            "oracle) and reports accuracy and the area under the learning curve after every round; "
            "ASHA stops weak trials. "
            "Re-running the same command resumes an interrupted sweep without repeating finished trials."
        ),
        epilog=(
            "outputs in <loop.run_dir>/<loop.name>/: trials.csv, best_config.yaml, learning_curves.png,\n"
            "sweep_summary.json, scheduler_decisions.jsonl and one run directory per trial.\n\n"
            "examples:\n"
            "  python -m hssal_ray.tune --config configs/sweep_demo.yaml\n"
            "  python -m hssal_ray.tune --config configs/sweep_ucm_cpu.yaml resources.num_cpus=4 --resume\n"
            "  ray job submit --working-dir . -- python -m hssal_ray.tune --config configs/sweep_demo.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="sweep YAML: loop settings (or 'base: FILE') plus a tune section")
    p.add_argument(
        "--resume", action="store_true", help="resume the interrupted sweep (an error if there is none)"
    )
    p.add_argument("--smoke-test", action="store_true", help="tiny synthetic data and loop settings (CI)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved sweep config and trial plan, then exit",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. tune.num_samples=4"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 = at least one trial finished, 1 = none did, 2 = bad input)."""
    args = _parser().parse_args(argv)
    from hssal_ray.cli import SMOKE_OVERRIDES, setup_logging

    setup_logging(args.verbose)
    try:
        from hssal_ray.config import config_to_yaml
        from hssal_ray.tune.search import load_sweep_config, plan_sweep, run_sweep, trial_bundles

        overrides = (SMOKE_OVERRIDES + SMOKE_SWEEP_OVERRIDES if args.smoke_test else []) + list(
            args.overrides
        )
        cfg = load_sweep_config(args.config, overrides)
        plan = plan_sweep(cfg)  # validates every searched key before Ray starts
        if args.print_config:
            print(config_to_yaml(cfg), end="")
            print(f"# sweep dir: {plan.sweep_dir}\n# tune experiment: {plan.exp_path}")
            print(f"# trial bundles: {trial_bundles(cfg)}; whole trial footprint: {plan.footprint}")
            print(f"# at most {plan.max_t} rounds per trial (incl. round 0)")
            return 0
        summary = run_sweep(cfg, resume=args.resume)
        return 0 if summary["status_counts"].get("completed", 0) else 1
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume the sweep", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
