"""Build the run report: learning curve, per-round tables, query class histograms, coarse coverage.

Output (in ``out_dir``; every file written atomically)::

    learning_curve.png           test accuracy vs labeled samples, all runs on one plot
    query_classes_<run>.png      class histogram of each round's query, one figure per run
    rounds.csv                   the per-round table of every run, machine-readable
    index.html                   self-contained page (it links the PNGs next to it)
    report.md                    the same tables in Markdown
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hssal_ray import _csv, _io
from hssal_ray.errors import StateError
from hssal_ray.report._data import RunData, load_run
from hssal_ray.report._plots import NO_ROUNDS, learning_curve_png, query_classes_png

__all__ = ["build_report", "CURVE_FILE", "HTML_FILE", "MARKDOWN_FILE", "ROUNDS_CSV_FILE"]

logger = logging.getLogger(__name__)

CURVE_FILE = "learning_curve.png"
HTML_FILE = "index.html"
MARKDOWN_FILE = "report.md"
ROUNDS_CSV_FILE = "rounds.csv"
_TOP_CLASSES = 8

Table = tuple[list[str], list[list[str]]]


def build_report(run_dirs: Sequence[str], out_dir: str) -> dict[str, str]:
    """Write the report of one or more runs into ``out_dir``.

    Works on runs in any state: with no completed round the tables say "no completed rounds yet";
    malformed ``metrics.jsonl`` lines and unreadable files are skipped with a warning (logged and
    listed in the report).

    Args:
        run_dirs: Run directories (local paths or URIs); the first one's name comes first in legends.
        out_dir: Output directory, created if needed (usually ``<run>/report``).

    Returns:
        What was written, ``kind -> path``: ``learning_curve``, ``rounds_csv``, ``html``,
        ``markdown`` and ``query_classes/<run name>`` per run.

    Raises:
        StateError: No run given, or a run directory does not exist.
    """
    if not run_dirs:
        raise StateError("no run directory given")
    runs = [load_run(str(path), name) for path, name in zip(run_dirs, _unique_names(run_dirs), strict=True)]
    written: dict[str, str] = {}

    def put(kind: str, name: str, data: bytes) -> None:
        path = _io.join(out_dir, name)
        _io.atomic_write_bytes(path, data)
        written[kind] = path

    put("learning_curve", CURVE_FILE, learning_curve_png(runs))
    images: dict[str, str] = {}
    for run in runs:
        images[run.name] = f"query_classes_{_slug(run.name)}.png"
        put(f"query_classes/{run.name}", images[run.name], query_classes_png(run))
    put("rounds_csv", ROUNDS_CSV_FILE, _rounds_csv(runs).encode("utf-8"))
    put("html", HTML_FILE, _html(runs, images).encode("utf-8"))
    put("markdown", MARKDOWN_FILE, _markdown(runs, images).encode("utf-8"))
    logger.info("report of %d run(s) written to %s", len(runs), out_dir)
    return written


def _unique_names(run_dirs: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in run_dirs:
        base = str(path).rstrip("/").rsplit("/", 1)[-1]
        if base in ("", ".", ".."):
            base = os.path.basename(os.path.abspath(str(path))) or "run"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


# ---------------------------------------------------------------- cell formatting


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _pct(value: Any) -> str:
    x = _num(value)
    if x is None:
        return "—"
    return f"{100 * x:.2f}%" if abs(x) <= 1.0 else f"{x:.2f}"


def _fixed(value: Any, digits: int) -> str:
    x = _num(value)
    return "—" if x is None else f"{x:.{digits}f}"


def _coverage(run: RunData, r: int) -> str:
    if r not in run.coverage:
        return "—"
    covered, k = run.coverage[r]
    return f"{covered}/{k}" if k else str(covered)


# ---------------------------------------------------------------- tables


def _summary_table(runs: Sequence[RunData]) -> Table:
    head = ["Run", "Strategy", "Status", "Rounds", "Labels", "Test accuracy", "Best accuracy"]
    rows = []
    for run in runs:
        last = run.rounds[-1] if run.rounds else {}
        best = max((float(r["test_accuracy"]) for r in run.rounds), default=None)
        rows.append(
            [
                run.name,
                run.strategy,
                _status(run),
                str(len(run.rounds)),
                _fixed(last.get("num_labeled"), 0),
                _pct(last.get("test_accuracy")),
                _pct(best),
            ]
        )
    return head, rows


def _status(run: RunData) -> str:
    state = run.state
    if not state:
        return "—"
    parts = [str(state.get("status", "?"))]
    if "round" in state:
        parts.append(f"round {state['round']}")
    if state.get("stage"):
        parts.append(f"stage {state['stage']}")
    return ", ".join(parts)


def _rounds_table(run: RunData) -> Table:
    stages = run.stages()
    head = ["Round", "Labels", "Label fraction", "Test accuracy", "Kappa vs last round"]
    head += ["Predictions changed", "Mask rate", "Pseudo-label acc"]
    head += ["Sup loss", "Unsup loss", *[f"{s} s" for s in stages], "Total s", "Coarse coverage"]
    rows = []
    for r in run.rounds:
        wall = r["wall_s"]
        rows.append(
            [
                str(r["round"]),
                _fixed(r["num_labeled"], 0),
                _pct(r.get("label_fraction")),
                _pct(r["test_accuracy"]),
                _fixed(r.get("stability_kappa"), 4),
                _pct(r.get("stability_changed")),
                _pct(r.get("mask_rate")),
                _pct(r.get("pseudo_label_acc")),
                _fixed(r.get("sup_loss"), 4),
                _fixed(r.get("unsup_loss"), 4),
                *[_fixed(wall.get(s), 2) for s in stages],
                _fixed(sum(wall.values()), 2) if wall else "—",
                _coverage(run, int(r["round"])),
            ]
        )
    return head, rows


def _queries_table(run: RunData) -> Table:
    head = ["Round", "Queried", "Distinct classes", "Coarse coverage", "Classes (most queried first)"]
    rows = []
    for r, counts in sorted(run.queries.items()):
        top = ", ".join(f"{name} {n}" for name, n in counts.most_common(_TOP_CLASSES))
        if len(counts) > _TOP_CLASSES:
            top += f", … ({len(counts) - _TOP_CLASSES} more)"
        rows.append([str(r), str(sum(counts.values())), str(len(counts)), _coverage(run, r), top])
    return head, rows


def _rounds_csv(runs: Sequence[RunData]) -> str:
    stages = list(dict.fromkeys(s for run in runs for s in run.stages()))
    keys = ["label_fraction", "test_accuracy", "stability_kappa", "stability_changed", "mask_rate"]
    keys += ["pseudo_label_acc", "sup_loss", "unsup_loss"]
    buf = io.StringIO()
    writer = _csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "run",
            "strategy",
            "round",
            "num_labeled",
            *keys,
            *[f"wall_{s}" for s in stages],
            "coarse_covered",
            "coarse_k",
        ]
    )
    for run in runs:
        for r in run.rounds:
            covered, k = run.coverage.get(int(r["round"]), (None, None))
            cells = [_num(r.get(key)) for key in keys] + [r["wall_s"].get(s) for s in stages]
            writer.writerow(
                [
                    run.name,
                    run.strategy,
                    r["round"],
                    r["num_labeled"],
                    *["" if c is None else c for c in cells],
                ]
                + ["" if covered is None else covered, "" if k is None else k]
            )
    return buf.getvalue()


# ---------------------------------------------------------------- HTML and Markdown

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
td.text{text-align:left} img{max-width:100%;border:1px solid #eee}
.warn{color:#a50}.muted{color:#777}
"""


def _html_table(table: Table) -> str:
    head, rows = table
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=text' if not _numeric(c) else ''}>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+0-9.,%/—]+", cell))


def _html(runs: Sequence[RunData], images: dict[str, str]) -> str:
    esc = html.escape
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = esc(", ".join(r.name for r in runs))
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>HSSAL run report</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>HSSAL run report</h1><p class=muted>{names} · generated {stamp}</p>",
        _html_table(_summary_table(runs)),
        f'<img src="{CURVE_FILE}" alt="learning curve">',
    ]
    for run in runs:
        parts.append(f"<h2>{esc(run.label)}</h2><p class=muted>{esc(run.path)} · {esc(_status(run))}</p>")
        if run.rounds:
            parts.append(_html_table(_rounds_table(run)))
        else:
            parts.append(f"<p>{NO_ROUNDS}.</p>")
        parts.append("<h3>Query class histogram and coarse-cluster coverage</h3>")
        if run.queries:
            parts.append(_html_table(_queries_table(run)))
        parts.append(f'<img src="{esc(images[run.name])}" alt="query classes of {esc(run.name)}">')
        if run.warnings:
            items = "".join(f"<li>{esc(w)}</li>" for w in run.warnings)
            parts.append(f"<p class=warn>Skipped while reading this run:</p><ul class=warn>{items}</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(runs: Sequence[RunData], images: dict[str, str]) -> str:
    parts = [
        "# HSSAL run report",
        "",
        _md_table(_summary_table(runs)),
        "",
        f"![learning curve]({CURVE_FILE})",
        "",
    ]
    for run in runs:
        parts += [f"## {run.label}", "", f"`{run.path}` · {_status(run)}", ""]
        parts += [_md_table(_rounds_table(run)) if run.rounds else f"{NO_ROUNDS}.", ""]
        parts += ["### Query class histogram and coarse-cluster coverage", ""]
        if run.queries:
            parts += [_md_table(_queries_table(run)), ""]
        parts += [f"![query classes of {run.name}]({images[run.name]})", ""]
        if run.warnings:
            parts += ["Skipped while reading this run:", "", *[f"- {w}" for w in run.warnings], ""]
    return "\n".join(parts)
