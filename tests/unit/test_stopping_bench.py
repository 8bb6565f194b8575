"""benchmarks/stopping.py's reading of recorded kappas: the live rule's round, and what it costs."""

from __future__ import annotations

import pytest

from benchmarks.stopping import per_round, report, stop_points, summarize_rule


def _rows(kappas: list[float | None], accs: list[float], step: int = 10) -> list[dict]:
    return [
        {"round": r, "num_labeled": step * (r + 1), "test_accuracy": a, "stability_kappa": k}
        for r, (k, a) in enumerate(zip(kappas, accs, strict=True))
    ]


def test_stop_points_follow_the_loops_rule() -> None:
    rows = _rows([None, 0.90, 0.96, 0.99, 0.995, None], [0.5, 0.6, 0.7, 0.75, 0.76, 0.78])
    assert stop_points(rows, 0.95, 1) == 2
    assert stop_points(rows, 0.98, 2) == 4  # (0.99 + 0.995) / 2
    assert stop_points(rows, 0.99, 3) == 5  # never: runs to the end (the last round has no kappa)


def test_summarize_rule_counts_labels_and_accuracy_given_up() -> None:
    per_seed = {
        0: _rows([None, 0.96, 0.99, None], [0.5, 0.7, 0.8, 0.85]),
        1: _rows([None, 0.90, 0.92, None], [0.5, 0.7, 0.8, 0.82]),
    }
    out = summarize_rule(per_seed, 0.95, 1)
    assert out["stopped"] == "1/2" and out["labels_range"] == "20-40"
    assert out["labels_mean"] == 30 and out["labels_saved_pct"] == pytest.approx(25.0)
    assert out["acc_vs_end_mean"] == pytest.approx(100 * (-0.15 + 0.0) / 2)
    assert out["acc_vs_end_worst"] == pytest.approx(-15.0)
    table = per_round(per_seed)
    assert table[1]["kappa"] == pytest.approx(0.93) and table[0]["kappa"] is None
    result = {
        "dataset": "toy",
        "command": "x",
        "profile": "p",
        "overrides": [],
        "evaluated_on": "validation split",
        "seeds": [0, 1],
        "wall_s": 60,
        "device": {"summary": "here"},
        "until": 0.3,
        "thresholds": [0.95],
        "windows": [1],
        "runs": {"hssal": {"0": per_seed[0], "1": per_seed[1]}},
    }
    assert "| 0.95 | 1 | 1/2 |" in report(result) and "## Every method" not in report(result)
    result["runs"]["other"] = {"0": per_seed[1], "1": per_seed[1]}
    text = report(result)
    assert "| labels | hssal | other |" in text and "| 20 | 0.7000 | 0.7000 |" in text
    assert "| other | 2 | 40.0 | 0.8200 ± 0.0000 |" in text  # 0.99/3 never settles: both run to the end
