"""A finished (or interrupted) sweep's outputs: trials table, best config, learning curves, decisions.

Pure Python on plain records (no Ray): :mod:`hssal_ray.tune.search` turns Tune's results into
:class:`TrialRecord` objects and calls :func:`write_outputs`. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hssal_ray import _csv, _io
from hssal_ray.config import ExperimentConfig, config_to_yaml
from hssal_ray.tune._space import label_axis, planned_labels

__all__ = ["TrialRecord", "rank_key", "read_decisions", "write_outputs", "DECISIONS_FILE"]

DECISIONS_FILE = "scheduler_decisions.jsonl"
TOP_K = 5


@dataclass
class TrialRecord:
    """One trial of a sweep, as the outputs need it.

    Args:
        trial_id: Tune's trial id.
        name: Run name (``loop.name``) of the trial; its run directory is ``<sweep dir>/<name>``.
        params: ``{dotted key: value}`` of the trial (plus ``_repeat`` when > 0).
        config: The trial's loop config.
        rows: Its ``metrics.jsonl`` rows.
        status: ``completed``, ``early_stopped``, ``error``, ``running``, ``pending`` or ``stopped``.
        metrics: Tune's last result (``auc``, ``final_accuracy``, ``time_total_s``, ...).
        stopped_at_round: The round after which the scheduler stopped it, if it did.
        error: Error text of a failed trial.
    """

    trial_id: str
    name: str
    params: dict[str, Any]
    config: ExperimentConfig
    rows: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_at_round: int | None = None
    error: str | None = None

    def value(self, metric: str) -> float:
        """The sweep metric (``auc`` or ``final_accuracy``), NaN when never reported."""
        v = self.metrics.get(metric)
        return float(v) if isinstance(v, (int, float)) else float("nan")


def read_decisions(sweep_dir: str) -> list[dict[str, Any]]:
    """The scheduler's decisions recorded so far (one dict per result it judged)."""
    p = _io.join(sweep_dir, DECISIONS_FILE)
    if not _io.exists(p):
        return []
    return [json.loads(line) for line in _io.read_text(p).splitlines() if line.strip()]


def rank_key(metric: str) -> Any:
    """Sort key: completed first, then ``metric`` (higher first), ties by trial id (stable on restore)."""

    def key(t: TrialRecord) -> tuple[int, float, str]:
        v = t.value(metric)
        return (0 if t.status == "completed" else 1, -v if not math.isnan(v) else math.inf, t.trial_id)

    return key


def _num(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else str(v)


def _trials_csv(trials: Sequence[TrialRecord], keys: Sequence[str]) -> str:
    buf = io.StringIO()
    w = _csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "trial_id",
            "name",
            "status",
            "stopped_at_round",
            *keys,
            "repeat",
            "seed",
            "auc",
            "final_accuracy",
            "num_labeled",
            "rounds",
            "planned_rounds",
            "wall_s",
            "run_dir",
        ]
    )
    for t in trials:
        last = t.rows[-1] if t.rows else {}
        w.writerow(
            [
                t.trial_id,
                t.name,
                t.status,
                _num(t.stopped_at_round),
                *[_num(t.params.get(k)) for k in keys],
                t.params.get("_repeat", 0),
                t.config.seed,
                _num(t.value("auc")),
                _num(t.value("final_accuracy")),
                _num(last.get("num_labeled")),
                _num(last.get("round")),
                t.config.loop.rounds,
                _num(t.metrics.get("time_total_s")),
                t.config.run_path,
            ]
        )
    return buf.getvalue()


def _curves_png(trials: Sequence[TrialRecord], metric: str, title: str) -> bytes:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    drawn = held = 0
    for i, t in enumerate(trials):
        if not t.rows:
            continue
        xs = [r[label_axis(t.config)] for r in t.rows]
        ys = [r.get("test_accuracy") for r in t.rows]
        stopped = ", stopped early" if t.status == "early_stopped" else ""
        label = f"{t.name.rsplit('_', 1)[0]} ({metric} {t.value(metric):.3f}{stopped})"
        ax.plot(xs, ys, "-", marker="o", color=cmap(i % 10), label=label)
        end = planned_labels(t.config)
        if xs[-1] < end and ys[-1] is not None:  # the AUC holds the last accuracy to the end of the budget
            ax.plot([xs[-1], end], [ys[-1], ys[-1]], ":", color=cmap(i % 10), alpha=0.7)
            held += 1
        drawn += 1
    if drawn:
        note = "dotted: last accuracy held to the budget (as in the AUC)" if held else None
        ax.legend(fontsize=7, loc="best", title=note, title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no evaluated rounds yet", ha="center", va="center", transform=ax.transAxes)
    frac = bool(trials) and label_axis(trials[0].config) == "label_fraction"
    ax.set_xlabel("fraction of the training split labeled" if frac else "labeled samples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_outputs(
    sweep_dir: str,
    trials: Sequence[TrialRecord],
    *,
    metric: str,
    keys: Sequence[str],
    best_config: ExperimentConfig | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    """Write ``trials.csv``, ``best_config.yaml``, ``learning_curves.png`` and ``sweep_summary.json``.

    Args:
        sweep_dir: The sweep directory (``loop.run_dir/loop.name`` of the sweep config).
        trials: All trials.
        metric: Ranking metric.
        keys: Searched keys (CSV columns).
        best_config: The best trial's config rewritten as a standalone loop config (None: no trial
            reported anything yet).
        info: Extra summary fields (experiment path, resources, ...).

    Returns:
        The summary written to ``sweep_summary.json``.
    """
    ranked = sorted(trials, key=rank_key(metric))
    _io.atomic_write_text(_io.join(sweep_dir, "trials.csv"), _trials_csv(ranked, keys))
    best = ranked[0] if ranked and not math.isnan(ranked[0].value(metric)) else None
    if best is not None and best_config is not None:
        header = (
            f"# Best trial of sweep {sweep_dir}: {best.trial_id} ({best.name}), "
            f"{metric} {best.value(metric):.4f}, "
            f"final accuracy {best.value('final_accuracy'):.4f}, status {best.status}.\n"
            f"# Searched: {json.dumps({k: best.params.get(k) for k in keys})}\n"
            "# Run it with: python -m hssal_ray.loop --config best_config.yaml\n"
        )
        _io.atomic_write_text(_io.join(sweep_dir, "best_config.yaml"), header + config_to_yaml(best_config))
    top = [t for t in ranked if t.rows][:TOP_K]
    title = f"top {len(top)} of {len(trials)} trials by {metric}"
    _io.atomic_write_bytes(_io.join(sweep_dir, "learning_curves.png"), _curves_png(top, metric, title))
    decisions = read_decisions(sweep_dir)
    summary = {
        "metric": metric,
        "mode": "max",
        "num_trials": len(trials),
        "status_counts": {s: sum(t.status == s for t in trials) for s in sorted({t.status for t in trials})},
        "best": None
        if best is None
        else {
            "trial_id": best.trial_id,
            "name": best.name,
            "params": best.params,
            metric: best.value(metric),
            "final_accuracy": best.value("final_accuracy"),
            "status": best.status,
        },
        "early_stopped": {t.trial_id: t.stopped_at_round for t in trials if t.status == "early_stopped"},
        "scheduler_decisions": len(decisions),
        "scheduler_stops": [d for d in decisions if d.get("decision") == "STOP" and not d.get("final")],
        **info,
    }
    _io.atomic_write_json(_io.join(sweep_dir, "sweep_summary.json"), summary)
    return summary
