"""``python -m hssal_ray.report RUN [RUN ...] [--out DIR]``: write the report of one or more runs.

Prints the paths it wrote, one per line. Exits 2 with a one-line error for a bad run directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hssal_ray import _io
from hssal_ray.errors import HSSALError
from hssal_ray.report.build import build_report

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hssal_ray.report",
        description="Learning curve, per-round tables and query class histograms of one or more HSSAL runs "
        "(several runs share one learning-curve plot, e.g. HSSAL vs baselines).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory (local path or URI)")
    p.add_argument(
        "--out", metavar="DIR", default=None, help="output directory (default: <first RUN>/report)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress, not only warnings")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a user error.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    out = args.out or _io.join(args.runs[0], "report")
    try:
        written = build_report(args.runs, out)
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
