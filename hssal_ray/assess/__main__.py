"""``python -m hssal_ray.assess {plan,sample,estimate,curve}``: how accurate is the map, with intervals.

How accurate is the map ``python -m hssal_ray.predict`` made, and how much of each class is really
there? ``plan`` says how many chips to label for intervals of a given width (``--from ASSESS``: from
the labels so far); ``sample`` draws a stratified random sample of the map's chips and hands it to a
person (files or Label Studio), blind to the map's class (``--extend``: more chips); ``estimate``
reads the labels back and writes the overall, user's and producer's accuracy and the error-adjusted
area of each class with 95% intervals (Olofsson et al. 2014; ``--map PRED2``: another map of the same
chips); ``curve`` gives every round's accuracy of the run from the same labels. The workflow:
docs/MAP_ACCURACY.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    from hssal_ray.assess.workflow import (
        LabelStudioTarget,
        draw_sample,
        estimate_accuracy,
        plan_assessment,
        render,
        render_plan,
    )
    from hssal_ray.errors import HSSALError
    from hssal_ray.oracle.label_studio import TOKEN_ENV

    p = argparse.ArgumentParser(prog="python -m hssal_ray.assess", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", help="how many chips to label for 95%% intervals of a given width")
    pl.add_argument(
        "predictions", nargs="?", default=None, help="the --out folder of python -m hssal_ray.predict"
    )
    pl.add_argument(
        "--from",
        dest="assessment",
        default=None,
        help="an assessment folder with a (partial) estimate: plan from the user's accuracies its labels "
        "measured, and print the --extend command that adds the chips",
    )
    pl.add_argument(
        "--halfwidth", type=float, default=0.02, help="overall accuracy within +- this (default 0.02)"
    )
    pl.add_argument(
        "--class-halfwidth",
        type=float,
        default=None,
        help="and every class's user's accuracy within +- this (e.g. 0.1; raises --min-per-class)",
    )
    pl.add_argument(
        "--min-per-class", type=int, default=None, help="as for sample (default 50, or the assessment's)"
    )
    pl.add_argument(
        "--accuracy",
        type=float,
        default=None,
        help="the user's accuracy to plan for, every class (default: each class's mean confidence)",
    )
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    s = sub.add_parser("sample", help="draw the sample to label from a prediction folder")
    s.add_argument("predictions", help="the --out folder of python -m hssal_ray.predict")
    s.add_argument("--out", required=True, help="the assessment folder to create")
    s.add_argument(
        "--n",
        type=int,
        required=True,
        help="chips to label in all (`plan` computes it for a target width; roughly, overall accuracy A's "
        "95%% interval is +-1.96 sqrt(A (1 - A) / n): A = 0.9, n = 900 gives +-0.02); per-class figures "
        "want 50 a class or more",
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
    s.add_argument(
        "--label-studio",
        metavar="URL",
        default=None,
        help="also import the sample into this Label Studio server (blind tasks; a project of its own "
        "unless --project-id); a sample drawn before is imported as it is",
    )
    s.add_argument(
        "--extend",
        action="store_true",
        help="ASSESS holds a smaller sample of this map with these settings: add chips to it until it is "
        "--n (a new batch to label, sample_2/, ...; the chips drawn and labeled so far stay)",
    )
    s.add_argument("--project-id", type=int, default=None, help="an existing Label Studio project to use")
    s.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        help="the environment variable holding the Label Studio API token (default LABEL_STUDIO_API_KEY)",
    )
    e = sub.add_parser("estimate", help="estimate accuracy and areas from the labeled sample")
    e.add_argument("assessment", help="the folder `sample` wrote")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--labels",
        nargs="+",
        help="the filled labels_template.csv or a Label Studio export (several: one per batch of an "
        "extended sample)",
    )
    src.add_argument(
        "--label-studio",
        action="store_true",
        help="pull the annotations from the Label Studio project `sample --label-studio` imported into",
    )
    src.add_argument(
        "--labels-from-archive",
        action="store_true",
        help="the archive's own labels instead of a person's (a labeled benchmark archive, the demo)",
    )
    e.add_argument(
        "--map",
        dest="other_maps",
        action="append",
        default=[],
        metavar="PRED",
        help="also assess this other map of the same chips (another round's or run's predict folder) "
        "with the same labels; repeat for several (assessment-of-<name>.md each)",
    )
    e.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="with --label-studio: poll this many seconds for the missing annotations (default: look once)",
    )
    e.add_argument(
        "--partial",
        choices=("wait", "continue"),
        default="wait",
        help="continue: estimate from the chips labeled so far (wait, the default, needs every one)",
    )
    c = sub.add_parser(
        "curve", help="every round's accuracy of the run, from the labels of the last estimate"
    )
    c.add_argument("assessment", help="an assessment folder with an estimate")
    c.add_argument("--run", default=None, help="the run (default: the one the sampled map came from)")
    c.add_argument("--rounds", type=int, nargs="+", default=None, help="these rounds (default: all trained)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.command == "plan":
            plan = plan_assessment(
                args.predictions,
                halfwidth=args.halfwidth,
                class_halfwidth=args.class_halfwidth,
                min_per_class=args.min_per_class,
                accuracy=args.accuracy,
                assessment=args.assessment,
            )
            print(
                json.dumps(plan, indent=1) if args.json else render_plan(plan), end="\n" if args.json else ""
            )
        elif args.command == "curve":
            from hssal_ray.assess.curve import assess_curve, render_curve

            print(render_curve(assess_curve(args.assessment, run=args.run, rounds=args.rounds, progress=say)))
        elif args.command == "sample":
            draw_sample(
                args.predictions,
                args.out,
                args.n,
                min_per_class=args.min_per_class,
                seed=args.seed,
                images=not args.no_images,
                extend=args.extend,
                label_studio=(
                    LabelStudioTarget(args.label_studio, args.project_id, args.token_env)
                    if args.label_studio
                    else None
                ),
                progress=say,
            )
        else:
            r = estimate_accuracy(
                args.assessment,
                args.labels,
                partial=args.partial,
                wait_s=args.wait_s,
                other_maps=args.other_maps,
                from_archive=args.labels_from_archive,
                progress=say,
            )
            print(render(r))
    except (HSSALError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
