"""Pool the seeds of several label-efficiency results and ask what a 5-seed run of them would say.

    python -m benchmarks.seed_pool --name "UCM validation" \\
        benchmarks/results/hal_val6/le_val_ucm_tb.json:hssal \\
        benchmarks/results/hal_val5/le_val_ucm_base5.json:ssl_entropy,ssl_margin ...  [--seeds 5] [--out DIR]

Each argument is ``RESULT.json:method[,method...]``: the per-seed accuracies of those methods are
taken from that result (``python -m benchmarks.label_efficiency`` wrote it). A method's seeds may
come from several results (e.g. seeds 0-9 from one run and 10-19 from another); a seed measured
twice with different numbers is an error, as are results with different budgets. Runs nothing.
``method=NAME`` takes the method under another name, so a recipe variant is compared with the
profile: ``VARIANT.json:hssal,hssal_flat PROFILE.json:hssal=profile`` reports the variant's HSSAL
against its own flat variant and against the profile's HSSAL (``--not-in-chance profile`` leaves
the profile out of the pass chance, which is about the baselines).

For HSSAL against every other method it reports, paired by seed over the seeds both have, the
mean margin at each budget after the cold start and over the whole curve (95% t-interval, as the
label-efficiency report does), and the chance that a fresh ``--seeds``-seed run passes "HSSAL's
mean >= the method's" in each cell and in every cell together: ``--seeds`` of the measured seeds
drawn with replacement, the same draw for every cell (:func:`pass_chance`). With many measured
seeds this is what the acceptance check of a 5-seed benchmark can be expected to say, given the
leads and the spread the seeds measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, md_table
from benchmarks._efficiency_report import curve_margins, round_diffs

__all__ = ["pool_summaries", "pass_chance", "report", "main"]

METHOD = "hssal"


def pool_summaries(specs: list[str], require: str | None = METHOD) -> dict[str, Any]:
    """Merge ``RESULT.json:m1,m2`` specs into one summary ``{method: {per_seed, num_labeled, ...}}``
    (``require``: a method the specs must give, None for any).

    Raises:
        ValueError: a malformed spec, a method missing from its result, budgets that differ, or a
            seed given twice with different accuracies.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        path, sep, methods = spec.rpartition(":")
        if not sep or not path or not methods:
            raise ValueError(f"{spec!r}: expected RESULT.json:method[,method...]")
        summary = json.loads(Path(path).read_text())["summary"]
        for item in methods.split(","):
            src, _, m = item.partition("=")
            m = m or src
            if src not in summary:
                raise ValueError(f"{path} has no {src!r} (it has {sorted(summary)})")
            s = summary[src]
            got = out.setdefault(m, {"num_labeled": s["num_labeled"], "per_seed": {}, "sources": []})
            if got["num_labeled"] != s["num_labeled"]:
                raise ValueError(f"{path}: {m} budgets {s['num_labeled']} != {got['num_labeled']} elsewhere")
            for seed, acc in s["per_seed"].items():
                if seed in got["per_seed"] and not np.allclose(got["per_seed"][seed], acc):
                    raise ValueError(f"{m} seed {seed} differs between {path} and an earlier result")
                got["per_seed"][seed] = acc
            got["sources"].append(path)
    if require is not None and require not in out:
        raise ValueError(
            f"no result gives {require!r}, the method the others are compared with: name one as it, "
            f"e.g. RESULT.json:hssal_flat={require}"
        )
    return out


def _diffs(summary: dict[str, Any], other: str) -> tuple[list[str], np.ndarray]:
    """Common seeds and HSSAL minus ``other`` there, (seeds, rounds after the cold start), points."""
    h, o = summary[METHOD], summary[other]
    common = sorted(set(h["per_seed"]) & set(o["per_seed"]), key=lambda s: (len(s), s))
    return common, round_diffs(h, o, common)


def pass_chance(
    diffs: dict[str, np.ndarray], n_seeds: int = 5, n_draws: int = 20_000, seed: int = 0
) -> dict[str, Any]:
    """Chance that an ``n_seeds``-seed run finds HSSAL's mean >= each method's, cell by cell and all.

    ``diffs[m]``: (S, R) paired margins over the same S measured seeds for every method. Each draw
    takes ``n_seeds`` of the S seeds with replacement, the same for every method and round (their
    correlation is kept), and averages them.

    Returns:
        ``{"per_cell": {m: [p per round]}, "per_method": {m: p all rounds}, "all": p}``.
    """
    seeds = {d.shape[0] for d in diffs.values()}
    if len(seeds) != 1:
        raise ValueError(f"every method needs the same seeds, got counts {sorted(seeds)}")
    s = seeds.pop()
    idx = np.random.default_rng(seed).integers(0, s, size=(n_draws, n_seeds))
    ok = {m: d[idx].mean(1) >= 0 for m, d in diffs.items()}  # (draws, rounds)
    every = np.stack([v.all(1) for v in ok.values()], 1).all(1)
    return {
        "per_cell": {m: v.mean(0).tolist() for m, v in ok.items()},
        "per_method": {m: float(v.all(1).mean()) for m, v in ok.items()},
        "all": float(every.mean()),
    }


def report(summary: dict[str, Any], n_seeds: int = 5, not_in_chance: tuple[str, ...] = ()) -> dict[str, Any]:
    """Paired margins, whole-curve intervals and pass chances of HSSAL against every other method
    (the methods in ``not_in_chance`` get margins and intervals but no pass chance)."""
    others = [m for m in summary if m not in (METHOD, "full_supervision")]
    curve = curve_margins(summary, METHOD)
    rows, diffs, seeds = [], {}, None
    labels = summary[METHOD]["num_labeled"][1:]
    for m in others:
        common, d = _diffs(summary, m)
        diffs[m] = d
        seeds = common if seeds is None or common == seeds else False
        c = curve[m]
        lo, hi = (100 * x for x in c["ci95"])  # curve_margins works in accuracy, this table in points
        rows.append(
            {
                "HSSAL minus": m,
                "seeds": len(common),
                **{
                    f"{n} labels": f"{d[:, i].mean():+.2f} ± {d[:, i].std(ddof=1):.2f}"
                    for i, n in enumerate(labels)
                },
                "curve [95% CI]": f"{100 * c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] {c['verdict']}",
                "wins": f"{c['wins']}/{len(common)}",
            }
        )
    in_chance = {m: d for m, d in diffs.items() if m not in not_in_chance}
    chance = pass_chance(in_chance, n_seeds) if seeds and in_chance else None
    if chance:
        for r in rows:
            if r["HSSAL minus"] not in in_chance:
                r[f"P({n_seeds}-seed mean >= 0)"] = r["P(every budget)"] = "—"
                continue
            p = chance["per_cell"][r["HSSAL minus"]]
            r[f"P({n_seeds}-seed mean >= 0)"] = " / ".join(f"{x:.2f}" for x in p)
            r["P(every budget)"] = f"{chance['per_method'][r['HSSAL minus']]:.2f}"
    return {"rows": rows, "pass_chance": chance, "seeds": seeds or None, "n_seeds": n_seeds}


def main(argv: list[str] | None = None) -> int:
    """Run the tool (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", metavar="RESULT.json:method[=NAME][,method...]")
    ap.add_argument("--name", default="pooled seeds", help="title of the report")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the run whose outcome is estimated")
    ap.add_argument("--out", help="write <out>.md and <out>.json (default: print the Markdown)")
    ap.add_argument(
        "--not-in-chance",
        default="",
        metavar="M[,M...]",
        help="methods compared but left out of the pass chance (e.g. the profile a variant is compared with)",
    )
    args = ap.parse_args(argv)
    try:
        summary = pool_summaries(args.specs)
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skip = tuple(m for m in args.not_in_chance.split(",") if m)
    unknown = [m for m in skip if m not in summary]
    if unknown:
        print(f"error: --not-in-chance names {unknown}, which no result gives", file=sys.stderr)
        return 2
    res = report(summary, args.seeds, skip)
    md = [
        f"# {args.name}: HSSAL against every method, seeds pooled",
        "",
        f"- command: `{command_line('benchmarks.seed_pool', argv)}`",
        f"- HSSAL seeds: {len(summary[METHOD]['per_seed'])}; margins in points, paired by seed, mean ± std",
        "",
        md_table(res["rows"], list(res["rows"][0]) if res["rows"] else []),
    ]
    if res["pass_chance"]:
        md += [
            "",
            f"Chance that a {args.seeds}-seed run finds HSSAL's mean >= every method's at every budget"
            + (f" ({', '.join(skip)} left out)" if skip else "")
            + ": "
            f"**{res['pass_chance']['all']:.2f}** ({args.seeds} of the {len(res['seeds'])} seeds drawn with "
            "replacement, 20,000 draws, the same draw for every cell).",
        ]
    text = "\n".join(md) + "\n"
    if args.out:
        Path(args.out + ".md").write_text(text)
        Path(args.out + ".json").write_text(
            json.dumps(
                {"name": args.name, "command": command_line("benchmarks.seed_pool", argv), **res}, indent=1
            )
        )
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
