"""Budgets as fractions of the training split: parsing, the one-unit rule, resolution to counts."""

from __future__ import annotations

import pytest

from hssal_ray.config import load_config
from hssal_ray.config.loop import budget_unit, label_count
from hssal_ray.errors import ConfigError
from hssal_ray.tune._space import label_axis, planned_labels, trial_config

FRACTIONS = ["loop.initial_labeled=0.02", "query.budget=0.02", "loop.total_budget=0.08"]


def test_fractions_parse_and_resolve() -> None:
    cfg = load_config(None, FRACTIONS)
    assert isinstance(cfg.query.budget, float) and budget_unit(cfg.loop) == "fraction"
    assert label_count(cfg.loop.initial_labeled, 1680) == 34
    assert label_count(cfg.loop.total_budget, 1680) == 134
    assert label_count(0.0001, 100) == 1  # never zero labels for a positive fraction
    assert label_count(34, 99_999) == 34  # counts stay counts
    counts = load_config(None, ["loop.initial_labeled=34", "query.budget=34"])
    assert budget_unit(counts.loop) == "count" and isinstance(counts.query.budget, int)


@pytest.mark.parametrize(
    "over, needle",
    [
        (["query.budget=1.5"], "fraction of the training split and must be in (0, 1]"),
        (["query.budget=0.0"], "query.budget"),
        (["loop.initial_labeled=-0.1"], "loop.initial_labeled"),
        (["loop.initial_labeled=0.02"], "all be counts (integers) or all fractions"),
        (
            ["loop.initial_labeled=0.02", "query.budget=0.02", "loop.total_budget=50"],
            "loop.total_budget=a count",
        ),
        (
            ["loop.initial_labeled=0.05", "query.budget=0.02", "loop.total_budget=0.04"],
            "must be >= loop.initial",
        ),
    ],
)
def test_bad_budgets_are_refused(over: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, over)
    assert needle in str(e.value)


def test_tune_rounds_and_auc_axis_in_fractions() -> None:
    base = load_config(None, [*FRACTIONS, "loop.rounds=9"])
    cfg = trial_config(base, {"query.budget": 0.02})
    assert cfg.loop.rounds == 3  # (0.08 - 0.02) / 0.02, not 4 from float residue
    assert planned_labels(cfg) == pytest.approx(0.08) and label_axis(cfg) == "label_fraction"
    assert label_axis(load_config(None, [])) == "num_labeled"
