"""``python -m hssal_ray.assess sample PRED --out ASSESS --n N`` then ``... estimate ASSESS --labels FILE``.

How accurate is the map ``python -m hssal_ray.predict`` made, and how much of each class is really
there? ``sample`` draws a stratified random sample of the map's chips and writes the files a person
labels them from (blind to the map's class); ``estimate`` reads the labels back and writes the
overall, user's and producer's accuracy and the error-adjusted area of each class with 95% intervals
(Olofsson et al. 2014). See :mod:`hssal_ray.assess.workflow`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    from hssal_ray.assess.workflow import draw_sample, estimate_accuracy
    from hssal_ray.errors import HSSALError

    p = argparse.ArgumentParser(prog="python -m hssal_ray.assess", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="draw the sample to label from a prediction folder")
    s.add_argument("predictions", help="the --out folder of python -m hssal_ray.predict")
    s.add_argument("--out", required=True, help="the assessment folder to create")
    s.add_argument(
        "--n",
        type=int,
        required=True,
        help="chips to label in all: overall accuracy's 95%% interval is about +-1.96 sqrt(A (1 - A) / n) "
        "(A = 0.9: n = 400 gives +-0.03, 900 +-0.02); per-class figures want 50 a class or more",
    )
    s.add_argument(
        "--min-per-class",
        type=int,
        default=50,
        help="chips at least per map class, the rest in proportion to the classes' sizes (default 50; "
        "0 = proportional)",
    )
    s.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    s.add_argument("--no-images", action="store_true", help="no thumbnails (the hand-off names the ids only)")
    e = sub.add_parser("estimate", help="estimate accuracy and areas from the labeled sample")
    e.add_argument("assessment", help="the folder `sample` wrote")
    e.add_argument("--labels", required=True, help="the filled labels_template.csv or a Label Studio export")
    e.add_argument(
        "--partial",
        choices=("wait", "continue"),
        default="wait",
        help="continue: estimate from the chips labeled so far (wait, the default, needs every one)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.command == "sample":
            draw_sample(
                args.predictions,
                args.out,
                args.n,
                min_per_class=args.min_per_class,
                seed=args.seed,
                images=not args.no_images,
                progress=say,
            )
        else:
            r = estimate_accuracy(args.assessment, args.labels, partial=args.partial, progress=say)
            from hssal_ray.assess.workflow import render

            print(render(r))
    except (HSSALError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
