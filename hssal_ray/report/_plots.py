"""Report figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hssal_ray.report._data import RunData

__all__ = ["learning_curve_png", "assessed_curve_png", "query_classes_png", "query_classes_figure"]

NO_ROUNDS = "no completed rounds yet"
MAX_LABEL_CHARS = 28
"""Longest line of a class name on the query histogram's axis."""
MAX_CLASSES_SHOWN = 150
"""Classes drawn on the query histogram; beyond, the most queried are shown and the rest summed."""


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def learning_curve_png(runs: Sequence[RunData]) -> bytes:
    """Test accuracy vs number of labeled samples, one line per run.

    Args:
        runs: The runs to draw; runs without completed rounds are left out of the plot.

    Returns:
        The PNG bytes.
    """
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for run in runs:
        if not run.rounds:
            continue
        xs = [float(r["num_labeled"]) for r in run.rounds]
        ys = [float(r["test_accuracy"]) for r in run.rounds]
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, label=run.label)
        drawn += 1
    if drawn:
        ax.set_xlabel("labeled samples")
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    else:
        _placeholder(ax, NO_ROUNDS)
    ax.set_title("Learning curve")
    return _png(fig)


def assessed_curve_png(rows: Sequence[dict], title: str) -> bytes:
    """Each round's overall accuracy from an assessment sample (``assess curve``) with its 95% interval,
    against the labels it was trained on (or the round, when the run's metrics are gone).

    Args:
        rows: ``curve.json``'s ``rounds``.
        title: The plot's title.
    """
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in rows if r["overall_accuracy"]["estimate"] is not None]
    if rows:
        by_labels = all(r.get("labels") is not None for r in rows)
        xs = [float(r["labels"] if by_labels else r["round"]) for r in rows]
        ys = [r["overall_accuracy"]["estimate"] for r in rows]
        lo = [y - (r["overall_accuracy"]["low"] or y) for y, r in zip(ys, rows, strict=True)]
        hi = [(r["overall_accuracy"]["high"] or y) - y for y, r in zip(ys, rows, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", markersize=4, linewidth=1.6, capsize=3)
        ax.set_xlabel("labeled samples" if by_labels else "round")
        ax.set_ylabel("overall accuracy on the archive (95% CI)")
        ax.grid(True, alpha=0.3)
    else:
        _placeholder(ax, NO_ROUNDS)
    ax.set_title(title)
    return _png(fig)


def query_classes_png(run: RunData) -> bytes:
    """The PNG of :func:`query_classes_figure`."""
    return _png(query_classes_figure(run))


def query_classes_figure(run: RunData) -> Figure:
    """Class histogram of each round's query as stacked horizontal bars (one colour per round).

    One row per class, so any number of classes with long names stays readable: the figure grows
    with the classes, names longer than :data:`MAX_LABEL_CHARS` are wrapped onto two lines (and
    shortened with an ellipsis beyond that), and beyond :data:`MAX_CLASSES_SHOWN` classes the
    most queried are shown and the rest summed in one row. The rounds are told apart by a colour
    bar, which, unlike a legend, never covers the bars.

    Args:
        run: The run; classes come from ``classes.json``, plus any other name seen in its answers.

    Returns:
        The figure (Agg canvas attached).
    """
    seen = {name for counts in run.queries.values() for name in counts}
    classes = list(run.class_names) + sorted(seen.difference(run.class_names))
    rounds = sorted(run.queries)
    counts = {c: [run.queries[r].get(c, 0) for r in rounds] for c in classes}
    if len(classes) > MAX_CLASSES_SHOWN:
        keep = set(sorted(classes, key=lambda c: -sum(counts[c]))[: MAX_CLASSES_SHOWN - 1])
        others = len(classes) - len(keep)
        rest = [c for c in classes if c not in keep]
        counts[f"({others} other classes)"] = [sum(counts[c][i] for c in rest) for i in range(len(rounds))]
        classes = [c for c in classes if c in keep] + [f"({others} other classes)"]
    labels = [_wrap(c) for c in classes]
    lines = max((lab.count("\n") + 1 for lab in labels), default=1)
    row_h = 0.14 * lines + 0.1  # a line of 8 pt text is 0.13 in
    fig = Figure(figsize=(8.0, max(3.0, 1.6 + row_h * len(classes))), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not rounds:
        _placeholder(ax, "no answered queries yet")
    else:
        cmap = colormaps["viridis"]
        lo, hi = rounds[0], rounds[-1]
        norm = Normalize(vmin=lo - 0.5, vmax=hi + 0.5)
        lefts = [0] * len(classes)
        for i, r in enumerate(rounds):
            widths = [counts[c][i] for c in classes]
            ax.barh(range(len(classes)), widths, left=lefts, color=cmap(norm(r)), height=0.8)
            lefts = [a + w for a, w in zip(lefts, widths, strict=True)]
        ax.set_yticks(range(len(classes)), labels, fontsize=8)
        ax.set_ylim(len(classes) - 0.5, -0.5)  # first class at the top
        ax.set_xlabel("queried samples")
        ax.grid(True, axis="x", alpha=0.3)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.04, aspect=30)
        bar.set_label("round", fontsize=8)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(len(rounds), 10)))
        bar.ax.tick_params(labelsize=7)
    ax.set_title(f"Query classes per round: {run.label}", fontsize=10)
    return fig


def _wrap(name: str) -> str:
    """A tick label: at most two lines of :data:`MAX_LABEL_CHARS`; a longer name keeps its start and
    its end (where names of one family differ) around an ellipsis."""
    name = " ".join(name.split())  # tabs and line breaks in a folder name become spaces
    lines = textwrap.wrap(name, MAX_LABEL_CHARS, break_on_hyphens=False) or [""]
    if len(lines) > 2:
        lines = [name[:MAX_LABEL_CHARS].rstrip(), "…" + name[-(MAX_LABEL_CHARS - 1) :].lstrip()]
    return "\n".join(lines)
