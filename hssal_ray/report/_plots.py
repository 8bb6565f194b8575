"""Report figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hssal_ray.report._data import RunData

__all__ = ["learning_curve_png", "query_classes_png"]

NO_ROUNDS = "no completed rounds yet"


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


def query_classes_png(run: RunData) -> bytes:
    """Class histogram of each round's query as stacked bars (one colour per round).

    Args:
        run: The run; classes come from ``classes.json``, plus any other name seen in its answers.

    Returns:
        The PNG bytes.
    """
    seen = {name for counts in run.queries.values() for name in counts}
    classes = list(run.class_names) + sorted(seen.difference(run.class_names))
    width = min(max(6.0, 0.28 * len(classes) + 2.5), 20.0)
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if not run.queries:
        _placeholder(ax, "no answered queries yet")
    else:
        cmap = colormaps["viridis"]
        bottoms = [0] * len(classes)
        rounds = sorted(run.queries)
        for i, r in enumerate(rounds):
            heights = [run.queries[r].get(c, 0) for c in classes]
            color = cmap(0.15 + 0.75 * (i / max(len(rounds) - 1, 1)))
            ax.bar(range(len(classes)), heights, bottom=bottoms, color=color, label=f"round {r}", width=0.8)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 8 else 0, fontsize=8)
        ax.set_ylabel("queried samples")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncols=max(1, len(rounds) // 12 + 1))
    ax.set_title(f"Query classes per round: {run.label}")
    return _png(fig)
