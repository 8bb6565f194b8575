"""Command-line entry points (``python -m hssal_ray.loop``)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any

from hssal_ray.errors import HSSALError, LeaseError

__all__ = ["loop_main", "SMOKE_OVERRIDES", "setup_logging", "EXIT_ERROR", "EXIT_LEASE"]

EXIT_ERROR = 2
"""Exit code of a bad config, bad input or inconsistent run directory."""
EXIT_LEASE = 3
"""Exit code when another driver holds (or took over) the run directory's lease."""

SMOKE_OVERRIDES = [
    "data.synthetic_classes=3",
    "data.synthetic_per_class=16",
    "data.image_size=16",
    "data.synthetic_size=16",
    "ssl.steps_per_round=4",
    "ssl.batch_size=4",
    "ssl.uratio=2",
    "ssl.eval_batch_size=32",
    "query.budget=3",
    "loop.initial_labeled=6",
    "loop.rounds=2",
]
"""What ``--smoke-test`` applies before the user's own overrides: a few-second run."""


def setup_logging(verbose: bool = False) -> None:
    """Console: warnings and the loop's ``[hssal]`` lines; ``-v`` adds DEBUG logs and Ray's output."""
    import os
    import warnings

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("hssal_ray").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        os.environ["HSSAL_VERBOSE"] = "1"  # read by _ray (Ray's progress bars, worker logs) and workers
    else:
        warnings.simplefilter("once")  # each warning once, not once per batch or round
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # library internals


def summary(run_dir: str, state: object) -> str:
    """The end-of-run table: one line per evaluated round, then the report's path."""
    from hssal_ray import _io
    from hssal_ray.loop.runner import read_metrics

    rows = read_metrics(run_dir)
    st: Any = state
    lines = [f"[hssal] status: {st.status} (round {st.round}, next stage {st.stage})"]
    if rows:
        lines.append("  round  labels  accuracy  (online)  mask  wall s  kappa")
        for r in rows:
            wall = sum((r.get("wall_s") or {}).values())
            k = r.get("stability_kappa")
            lines.append(
                f"  {r['round']:>5}  {r['num_labeled']:>6}  {r['test_accuracy']:>8.4f}  "
                f"({r.get('test_accuracy_online', float('nan')):.4f})  "
                f"{r.get('mask_rate', float('nan')):>4.2f}  {wall:>6.1f}  "
                + ("     -" if k is None else f"{k:>6.4f}")
            )
        last = rows[-1]
        if last.get("stopped") == "stable":
            lines.append(
                f"  stopped after round {last['round']}: its predictions settled (mean kappa "
                f"{last.get('stability_window_kappa', float('nan')):.4f} >= loop.stop_kappa)"
            )
    report = _io.join(run_dir, "report", "index.html")
    if _io.exists(report):
        lines.append(f"[hssal] report: {report}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hssal_ray.loop",
        description=(
            "Run the HSSAL closed loop "
            "(SSL train -> score pool -> hierarchical query -> oracle -> evaluate). "
            "With no --config it runs the embedded demo on generated synthetic data."
        ),
        epilog=(
            "examples:\n"
            "  python -m hssal_ray.loop --config configs/ucm_cpu.yaml data.root=../shared/data/ucm\n"
            "  python -m hssal_ray.loop --resume runs/ucm_human --labels labels.csv\n"
            "  ray job submit --working-dir . -- python -m hssal_ray.loop --config configs/demo.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file of config overrides (see configs/)")
    p.add_argument(
        "--resume", metavar="RUN", help="continue the run in directory RUN with its own config.yaml"
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="human labels (CSV sample_id,label or Label Studio JSON) for --resume",
    )
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="take over the run directory's lease even if another driver seems to hold it "
        "(only when that driver is gone, e.g. its machine is down)",
    )
    p.add_argument("--smoke-test", action="store_true", help="tiny, few-second settings (CI)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging and Ray's own output (progress bars, worker logs)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. query.budget=50"
    )
    return p


def loop_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m hssal_ray.loop``; returns the exit code."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        from hssal_ray.config import config_to_yaml, load_config
        from hssal_ray.loop.runner import LoopRunner, load_run_config

        overrides = (SMOKE_OVERRIDES if args.smoke_test else []) + list(args.overrides)
        if args.labels and not args.resume:
            raise HSSALError("--labels needs --resume RUN")
        if args.resume:
            if args.config:
                raise HSSALError("--resume uses the run's own config.yaml; do not pass --config with it")
            cfg = load_run_config(args.resume, overrides)
        else:
            cfg = load_config(args.config, overrides)
        if args.print_config:
            print(config_to_yaml(cfg), end="")
            return 0
        print(f"[hssal] run directory: {cfg.run_path} (resolved config: config.yaml there)", file=sys.stderr)
        state = LoopRunner(cfg).run(labels_file=args.labels, force_unlock=args.force_unlock)
        print(summary(cfg.run_path, state), file=sys.stderr)
        return 0
    except LeaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_LEASE
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM/SIGHUP while the run's lease is held (hssal_ray.loop.lease)
        from hssal_ray.loop.lease import Terminated

        if not isinstance(e, Terminated):
            raise
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return int(e.code)  # type: ignore[arg-type]
    except OSError as e:
        advice = _WRITE_ERRORS.get(e.errno or 0)
        if advice is None:
            raise
        print(
            f"error: {e.filename or 'a run file'}: {e.strerror}; {advice}, "
            "then re-run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_ERROR


_WRITE_ERRORS = {
    errno.ENOSPC: "free space on that file system",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "the file system is read-only: remount it read-write or set loop.run_dir elsewhere",
    errno.EACCES: "give this user access to it or set loop.run_dir elsewhere",
    errno.EPERM: "give this user access to it or set loop.run_dir elsewhere",
}
"""What to do about a file system that refuses a write (or a read), by errno. Every run-state write is atomic
(``hssal_ray/_io.py``), so the run's files are as they were before the failed write, and the same
command resumes once the cause is fixed."""
