"""The label-efficiency benchmark's report: paired margins, the acceptance checks, Markdown and the plot.

Everything here reads a finished result (``<tag>.json``: per-seed accuracy of every method at every
round), so a report can be rebuilt from the stored measurements without running anything again
(``python -m benchmarks.label_efficiency --render <tag>.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

BASELINES = (
    "hssal_flat",
    "ssl_entropy",
    "ssl_margin",
    "ssl_badge",
    "ssl_typiclust",
    "ssl_random",
    "supervised_hal",
)


def paired(summary: dict[str, Any], method: str = "hssal") -> dict[str, Any]:
    """HSSAL minus each baseline, seed by seed, at every round: mean, std, and whether within one std."""
    h = summary.get(method)
    out: dict[str, Any] = {}
    if not h:
        return out
    for other, o in summary.items():
        if other in (method, "full_supervision"):
            continue
        common = sorted(set(h["per_seed"]) & set(o["per_seed"]))
        if not common:
            continue
        n = min(len(h["num_labeled"]), len(o["num_labeled"]))
        d = np.array([np.array(h["per_seed"][s][:n]) - np.array(o["per_seed"][s][:n]) for s in common])
        std_other = np.array(o["accuracy_std"][:n])
        out[other] = {
            "diff_mean": d.mean(0).tolist(),
            "diff_std": d.std(0).tolist(),
            "wins": (d > 0).sum(0).tolist(),
            "seeds": common,
            "within_one_std": (
                np.abs(d.mean(0)) <= np.maximum(std_other, np.array(h["accuracy_std"][:n]))
            ).tolist(),
        }
    return out


def curve_margins(summary: dict[str, Any], method: str = "hssal") -> dict[str, Any]:
    """HSSAL minus each method over the whole learning curve after the cold start, per seed.

    Each seed gives one number, the mean paired difference over the post-cold-start rounds (the
    area between the two learning curves divided by the number of rounds), so the rounds of one
    seed, which are correlated, count once. Over seeds: mean, std, a two-sided 95% t-interval,
    wins, and a verdict: ``ahead`` / ``behind`` when the interval excludes 0, else ``tied``.
    """
    from scipy import stats

    h = summary.get(method)
    out: dict[str, Any] = {}
    if not h:
        return out
    for other, o in summary.items():
        n = min(len(h["num_labeled"]), len(o["num_labeled"]))
        common = sorted(set(h["per_seed"]) & set(o["per_seed"]))
        if other in (method, "full_supervision") or len(common) < 2 or n < 2:
            continue
        per_seed = np.array(
            [np.mean(np.subtract(h["per_seed"][s][1:n], o["per_seed"][s][1:n])) for s in common]
        )
        mean, std = float(per_seed.mean()), float(per_seed.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(common) - 1)) * std / math.sqrt(len(common))
        lo, hi = mean - half, mean + half
        out[other] = {
            "per_seed": per_seed.tolist(),
            "mean": mean,
            "std": std,
            "ci95": [lo, hi],
            "wins": int((per_seed > 0).sum()),
            "seeds": common,
            "verdict": "ahead" if lo > 0 else "behind" if hi < 0 else "tied",
        }
    return out


def round_diffs(h: dict[str, Any], o: dict[str, Any], seeds: list[str]) -> np.ndarray:
    """(seeds, rounds after the cold start) paired margins ``h - o``, points, over the budgets both have."""
    n = min(len(h["num_labeled"]), len(o["num_labeled"]))
    d = 100 * np.array([np.subtract(h["per_seed"][s][1:n], o["per_seed"][s][1:n]) for s in seeds])
    return d.reshape(len(seeds), max(n - 1, 0))


def lead_needed(
    summary: dict[str, Any],
    method: str = "hssal",
    levels: tuple[float, ...] = (0.8, 0.95),
    n_boot: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """How far ahead a method must truly be to pass "``method`` >= every baseline in every cell".

    The cells are the rounds after the cold start against each ``>=`` baseline (:data:`BASELINES`
    but supervised + HAL). Each cell's per-seed paired differences are centred on their mean (the
    spread the runs measured, with no lead), a uniform lead ``delta`` is added, and the seeds are
    resampled with replacement, the same seeds for every cell (so the cells' correlation is kept):
    the share of resamples where every cell's mean is >= 0 is the chance to pass. The bootstrap of
    a few seeds under-states their spread, so the leads found are lower bounds.

    Returns:
        ``{"cells": int, "seeds": int, "lead": {level: points or None}, "p_at": {points: prob}}``;
        empty when fewer than 2 seeds or no baseline is shared.
    """
    h = summary.get(method)
    cols = []
    seeds: list[Any] = []
    if h:
        for other in BASELINES:
            o = summary.get(other)
            if other == "supervised_hal" or not o:
                continue
            common = sorted(set(h["per_seed"]) & set(o["per_seed"]))
            n = min(len(h["num_labeled"]), len(o["num_labeled"]))
            if len(common) < 2 or n < 2 or (seeds and common != seeds):
                continue
            seeds = common
            d = round_diffs(h, o, common)
            cols.append(d - d.mean(0))
    if not cols:
        return {}
    centred = np.concatenate(cols, axis=1)  # (seeds, cells), points
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    worst = centred[idx].mean(1).min(1)  # per resample, the lowest cell mean at no lead
    grid = np.round(np.arange(0.0, 10.01, 0.1), 1)
    p = {float(g): float((worst + g >= 0).mean()) for g in grid}
    lead = {lv: next((g for g in p if p[g] >= lv), None) for lv in levels}
    return {"cells": int(centred.shape[1]), "seeds": len(seeds), "lead": lead, "p_at": p}


def checks(summary: dict[str, Any], diffs: dict[str, Any]) -> list[str]:
    """The issue's acceptance lines, measured."""
    lines = []
    h = summary.get("hssal")
    if h and "full_supervision" in summary:
        lines.append(
            f"HSSAL at {h['label_fraction'][-1]:.1%} = {h['pct_of_full_supervision'][-1]:.1f}% "
            "of full supervision (goal >= 95%)"
        )
    for other in BASELINES:
        if other not in diffs or not h:
            continue
        d = diffs[other]
        bad = [
            f"{h['label_fraction'][i]:.1%}"
            for i in range(1, len(d["diff_mean"]))
            if (d["diff_mean"][i] < 0 if other != "supervised_hal" else d["diff_mean"][i] <= 0)
        ]
        close = [
            f"{h['label_fraction'][i]:.1%}" for i in range(1, len(d["diff_mean"])) if d["within_one_std"][i]
        ]
        op = ">" if other == "supervised_hal" else ">="
        verdict = "yes" if not bad else f"NO at {', '.join(bad)}"
        note = f" (margin within one std at {', '.join(close)})" if close else ""
        lines.append(f"HSSAL {op} {other} after the cold start: {verdict}{note}")
    need = lead_needed(summary)
    if need:
        lv = need["lead"]
        say = ", ".join(
            f"{v:.1f} points for {100 * k:.0f}%" if v is not None else f"over 10 points for {100 * k:.0f}%"
            for k, v in lv.items()
        )
        lines.append(
            f'How demanding "HSSAL >= every baseline in all {need["cells"]} cells" is with this '
            "seed spread: a method truly ahead of each by the same lead in every cell passes it with a "
            f"chance of {100 * need['p_at'][1.0]:.0f}% at 1 point; it needs {say} (bootstrap over the "
            f"{need['seeds']} seeds, cells resampled together; lower bounds)"
        )
    return lines


def dataset_name(data: str, name: str | None = None) -> str:
    """The dataset's name for the report: ``name`` if given, else the ``--data`` folder's name."""
    if name and name.strip():
        return name.strip()
    folder = str(data).rstrip("/").rsplit("/", 1)[-1]  # local path or URI
    if folder in ("", ".", ".."):
        folder = Path(data).resolve().name
    return folder or str(data)


def evaluated_on(val_fraction: float, n_eval: int) -> str:
    """Which split every reported number was measured on, with its size."""
    if val_fraction:
        return f"validation split ({val_fraction:.0%} of train, {n_eval} images)"
    return f"test split ({n_eval} images)"


def plot_title(result: dict[str, Any]) -> str:
    """The plot's title: the dataset and the split measured on."""
    return f"{result['dataset']} label efficiency, product loop ({result['evaluated_on']})"


def report_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a finished benchmark ``result``."""
    s, diffs = result["summary"], result["paired_vs_hssal"]
    fracs = (
        [
            f"{f:.1%} ({n})"
            for f, n in zip(s["hssal"]["label_fraction"], s["hssal"]["num_labeled"], strict=True)
        ]
        if "hssal" in s
        else []
    )
    md = [
        f"# Label efficiency on {result['dataset']} (product loop, {result['profile_name']} profile)",
        "",
        f"- command: `{result['command']}`",
        f"- profile: `{result['profile']}` ({result['recipe']})",
        f"- evaluated on: {result['evaluated_on']}; wall time {result['wall_s'] / 60:.1f} min "
        f"(one-time encode {result['encode_s']:.0f} s) on {result['device']['summary']}",
        *(
            [f"- embeddings: store `{st['key']}`, content fingerprint `{st['fingerprint']}`"]
            if (st := result.get("store"))
            else []
        ),
        "",
        "Accuracy, mean ± std over seeds, at each label fraction "
        "(each cell: the loop's own `metrics.jsonl`).",
        "",
        "| method | seeds | " + " | ".join(fracs) + " | % of full at the end |",
        "|---|---|" + "---|" * len(fracs) + "---|",
    ]
    for method, m in s.items():
        if method == "full_supervision":
            continue
        cells = [f"{a:.3f} ± {d:.3f}" for a, d in zip(m["accuracy_mean"], m["accuracy_std"], strict=True)]
        pct = m.get("pct_of_full_supervision", [float("nan")])[-1]
        pct_cell = f"{pct:.1f}%" if pct is not None and np.isfinite(pct) else "— (no full supervision run)"
        md.append(f"| {method} | {len(m['seeds'])} | " + " | ".join(cells) + f" | {pct_cell} |")
    if "full_supervision" in s:
        f = s["full_supervision"]
        md.append(
            f"| full_supervision ({f['num_labeled'][-1]} labels) | {len(f['seeds'])} | "
            + " | ".join([""] * max(len(fracs) - 1, 0))
            + f" | {f['accuracy_mean'][-1]:.3f} ± {f['accuracy_std'][-1]:.3f} | 100% |"
        )
    md += [
        "",
        "Paired per-seed difference HSSAL minus each method (mean ± std; wins = seeds where HSSAL is ahead):",
        "",
    ]
    md += ["| vs | " + " | ".join(fracs) + " |", "|---|" + "---|" * len(fracs)]
    for other, d in diffs.items():
        cells = [
            f"{100 * a:+.1f} ± {100 * b:.1f} ({w}/{len(d['seeds'])}){' ~' if c else ''}"
            for a, b, w, c in zip(d["diff_mean"], d["diff_std"], d["wins"], d["within_one_std"], strict=True)
        ]
        md.append(f"| {other} | " + " | ".join(cells) + " |")
    md += [
        "",
        "`~`: the margin is inside one standard deviation.",
        "",
        *curve_markdown(result.get("curve_vs_hssal") or {}),
        "Reported (EMA) minus online weights' accuracy, points, mean over seeds, per round "
        "(issue 13 diagnostic; both from each round's `metrics.jsonl`):",
        "",
        "| method | " + " | ".join(fracs) + " |",
        "|---|" + "---|" * len(fracs),
        *[
            f"| {method} | "
            + " | ".join(
                f"{100 * (a - o):+.1f}"
                for a, o in zip(m["accuracy_mean"], m.get("online_accuracy_mean", []), strict=False)
            )
            + " |"
            for method, m in s.items()
            if method != "full_supervision"
        ],
        "",
        "Checks:",
        *[f"- {c}" for c in result["checks"]],
    ]
    return "\n".join(md) + "\n"


def curve_markdown(curve: dict[str, Any]) -> list[str]:
    """The learning-curve comparison (:func:`curve_margins`) as Markdown lines (none without it)."""
    if not curve:
        return []
    md = [
        "Over the whole curve after the cold start: per seed, HSSAL's mean paired margin over those rounds "
        "(points); over seeds, mean, 95% t-interval, wins, and the verdict (`tied`: the interval holds 0):",
        "",
        "| vs | mean | 95% interval | wins | verdict |",
        "|---|---|---|---|---|",
    ]
    for other, c in curve.items():
        lo, hi = c["ci95"]
        md.append(
            f"| {other} | {100 * c['mean']:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] | "
            f"{c['wins']}/{len(c['seeds'])} | {c['verdict']} |"
        )
    return [*md, ""]


def efficiency_figure(result: dict[str, Any]) -> Any:
    """The learning curves of every method (a matplotlib Figure, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = result["summary"]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, m in s.items():
        x = [100 * f for f in m["label_fraction"]]
        if method == "full_supervision":
            ax.axhline(m["accuracy_mean"][-1], color="k", ls="--", lw=1, label="full supervision")
            continue
        ax.errorbar(
            x,
            m["accuracy_mean"],
            yerr=m["accuracy_std"],
            marker="o",
            ms=3,
            capsize=2,
            lw=2.5 if method == "hssal" else 1.1,
            label=method,
        )
    ax.set_xlabel("% of training labels")
    ax.set_ylabel("accuracy (" + ("validation" if "val" in result["evaluated_on"] else "test") + ")")
    ax.set_title(plot_title(result), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def write_outputs(out_dir: Path, tag: str, result: dict[str, Any]) -> None:
    """``<tag>.json``, ``<tag>.md`` and ``<tag>.png`` in ``out_dir``; prints the Markdown."""
    text = report_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out_dir / f"{tag}.md").write_text(text)
    efficiency_figure(result).savefig(out_dir / f"{tag}.png", dpi=120)
    print(text)


def render(path: Path) -> dict[str, Any]:
    """Rebuild ``<tag>.md`` and ``<tag>.png`` (and the derived fields of ``<tag>.json``) from a result file.

    Only the per-seed measurements in ``summary`` are read; the paired margins, the learning-curve
    comparison and the checks are computed again, so an older result gains the current report.
    """
    result = json.loads(Path(path).read_text())
    for m in result["summary"].values():  # JSON object keys are strings; the runs' seeds are ints
        m["per_seed"] = {int(k): v for k, v in m["per_seed"].items()}
    finish(result)
    write_outputs(Path(path).parent, Path(path).stem, result)
    return result


def finish(result: dict[str, Any]) -> None:
    """Add the fields derived from ``result["summary"]``: paired margins, curve margins, checks."""
    s = result["summary"]
    result["paired_vs_hssal"] = paired(s)
    result["curve_vs_hssal"] = curve_margins(s)
    result["checks"] = checks(s, result["paired_vs_hssal"])
