"""Search-space parsing and validation, trial configs and names, the learning-curve AUC (no Ray)."""

from __future__ import annotations

import math

import pytest

from hssal_ray.config import ExperimentConfig, load_config
from hssal_ray.errors import ConfigError
from hssal_ray.tune._space import (
    REPEAT_KEY,
    ParamSpec,
    check_search_space,
    learning_curve_auc,
    max_reports,
    parse_search_space,
    planned_labels,
    round_metrics,
    sweep_fingerprint,
    trial_config,
    trial_name,
)


def _cfg(space: dict, *overrides: str) -> ExperimentConfig:
    cfg = load_config(None, list(overrides))
    return ExperimentConfig(**{**cfg.__dict__, "tune": cfg.tune.__class__(search_space=space)})


# ---------------------------------------------------------------- parsing


def test_parse_all_kinds() -> None:
    specs = parse_search_space(
        {
            "query.budget": {"grid": [3, 6]},
            "ssl.p_cutoff": {"choice": [0.8, 0.95]},
            "ssl.lambda_u": {"uniform": [0.5, 2.0]},
            "ssl.lr": {"loguniform": [0.001, 0.1]},
            "query.coarse_k": {"randint": [2, 10]},
            "query.fine_method": ["kmeans", "spectral"],
        }
    )
    by = {s.key: s for s in specs}
    assert by["query.budget"] == ParamSpec("query.budget", "grid", (3, 6))
    assert by["query.fine_method"].kind == "grid"  # a bare list is a grid
    assert by["ssl.lambda_u"].candidates() == [0.5, 2.0]
    assert by["query.coarse_k"].candidates() == [2, 9]  # upper bound excluded, as in Tune


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ({"ssl.lr": {"loguniform": [0, 1]}}, "lo > 0"),
        ({"ssl.lr": {"uniform": [1, 0.5]}}, "lo < hi"),
        ({"query.coarse_k": {"randint": [1.5, 4]}}, "integers"),
        ({"query.budget": {"grid": []}}, "non-empty"),
        ({"query.budget": {"range": [1, 2]}}, "expected one of"),
        ({"query.budget": 5}, "expected one of"),
        ({"loop.name": ["a"]}, "science settings"),
        ({"resources.num_workers": [1, 2]}, "science settings"),
        ({"tune.num_samples": [1]}, "science settings"),
        ({REPEAT_KEY: [1]}, "reserved"),
    ],
)
def test_parse_rejects(space: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_search_space(space)


def test_check_lists_every_problem_in_one_error() -> None:
    cfg = _cfg(
        {
            "ssl.p_cutof": [0.9],  # typo
            "nosection.x": [1],
            "ssl.p_cutoff": {"choice": [0.5, 1.5]},  # out of range
            "query.strategy": ["hal", "bogus"],
            "seed.x": [1],
            "ssl": [1],
            "ssl.lr": {"uniform": [2, 1]},
            "query.budget": [3],  # fine
        }
    )
    with pytest.raises(ConfigError) as e:
        check_search_space(cfg)
    msg = str(e.value)
    for needle in (
        "did you mean 'p_cutoff'",
        "unknown config key 'nosection'",
        "must be in [0, 1]",
        "bogus",
        "'seed' is a setting",
        "whole section",
        "lo < hi",
    ):
        assert needle in msg, needle
    assert "query.budget" not in msg


def test_check_rejects_empty_space_and_human_oracle() -> None:
    with pytest.raises(ConfigError, match="empty"):
        check_search_space(_cfg({}))
    with pytest.raises(ConfigError, match="simulated"):
        check_search_space(_cfg({"query.budget": [3]}, "oracle.kind=human"))


def test_rounds_twice_rejected_at_fixed_total_budget() -> None:
    with pytest.raises(ConfigError, match="loop.rounds is derived"):
        check_search_space(_cfg({"query.budget": [3], "loop.rounds": [1, 2]}, "loop.total_budget=20"))
    # without a total budget both may be searched
    check_search_space(_cfg({"query.budget": [3], "loop.rounds": [1, 2]}))


# ---------------------------------------------------------------- trial configs


def test_rounds_adapt_to_query_size_at_fixed_total_budget() -> None:
    base = load_config(None, ["loop.initial_labeled=6", "loop.total_budget=20", "loop.rounds=99"])
    rounds = {b: trial_config(base, {"query.budget": b}).loop.rounds for b in (1, 3, 7, 14, 30)}
    assert rounds == {1: 14, 3: 5, 7: 2, 14: 1, 30: 1}
    for b in (1, 3, 7, 14, 30):
        assert planned_labels(trial_config(base, {"query.budget": b})) == 20
    # no total budget: rounds stay as configured
    base0 = load_config(None, ["loop.rounds=4"])
    assert trial_config(base0, {"query.budget": 3}).loop.rounds == 4
    assert planned_labels(trial_config(base0, {"query.budget": 3})) == 20 + 4 * 3
    # a key that does not change the budget leaves rounds alone
    assert trial_config(base, {"ssl.p_cutoff": 0.9}).loop.rounds == 99


def test_max_reports_is_the_longest_trial_plus_round_zero() -> None:
    base = _cfg({"query.budget": {"grid": [3, 6]}}, "loop.initial_labeled=6", "loop.total_budget=12")
    specs = parse_search_space(base.tune.search_space)
    assert max_reports(base, specs) == 3
    specs = parse_search_space({"query.budget": {"randint": [2, 7]}})
    assert max_reports(base, specs) == 4  # budget 2 -> 3 rounds
    assert max_reports(base, parse_search_space({"ssl.p_cutoff": [0.5]})) == base.loop.rounds + 1


def test_trial_config_sets_identity_and_drops_the_sweep() -> None:
    base = _cfg({"query.budget": [3]}, "seed=5")
    import numpy as np

    cfg = trial_config(
        base, {"ssl.p_cutoff": np.float64(0.8), "query.coarse_k": np.int64(4)}, run_dir="/x/sw"
    )
    assert cfg.ssl.p_cutoff == 0.8 and cfg.query.coarse_k == 4 and isinstance(cfg.query.coarse_k, int)
    assert cfg.loop.run_dir == "/x/sw" and cfg.loop.name == trial_name(
        {"ssl.p_cutoff": 0.8, "query.coarse_k": 4}
    )
    assert cfg.tune.search_space == {} and cfg.seed == 5
    assert trial_config(base, {"ssl.p_cutoff": 0.8}, repeat=2).seed == 7  # repeat k -> seed + k
    assert trial_config(base, {"seed": 1}, repeat=2).seed == 1  # unless the seed is searched


# ---------------------------------------------------------------- names


def test_trial_name_is_stable_safe_and_distinct() -> None:
    a = trial_name({"query.budget": 5, "ssl.p_cutoff": 0.9})
    assert a == trial_name({"ssl.p_cutoff": 0.9, "query.budget": 5})  # order-free
    assert a.startswith("budget=5-p_cutoff=0.9_") and len(a.rsplit("_", 1)[1]) == 8
    assert a != trial_name({"query.budget": 5, "ssl.p_cutoff": 0.90001})  # rounding cannot collide
    assert a != trial_name({"query.budget": 5, "ssl.p_cutoff": 0.9}, repeat=1)
    assert trial_name({"query.budget": 5, "ssl.p_cutoff": 0.9}, repeat=1).startswith("r1-")
    odd = trial_name({"data.root": "../x/y z", "data.mean": [0.5, 0.25, 0.1]})
    assert "/" not in odd and " " not in odd
    assert len(trial_name({f"ssl.k{i}": "v" * 30 for i in range(10)})) < 100
    import numpy as np

    assert trial_name({"query.budget": np.int64(5)}) == trial_name({"query.budget": 5})
    # ... and the same name the sweep's loop.name gets
    assert trial_config(ExperimentConfig(), {"query.budget": 5}).loop.name == trial_name({"query.budget": 5})


# ---------------------------------------------------------------- AUC


def test_auc_known_answers() -> None:
    # flat curve -> its accuracy
    assert learning_curve_auc([(10, 0.6), (20, 0.6), (30, 0.6)], 10, 30) == pytest.approx(0.6)
    # linear rise 0.5 -> 0.7 over the whole range -> mean 0.6
    assert learning_curve_auc([(10, 0.5), (30, 0.7)], 10, 30) == pytest.approx(0.6)
    # stopped at 20 labels: the last accuracy is held flat to the end of the budget
    # (10..20: mean 0.6 -> 6; 20..30: 0.7 -> 7) / 20 = 0.65
    assert learning_curve_auc([(10, 0.5), (20, 0.7)], 10, 30) == pytest.approx(0.65)
    # a single round (cold start only) -> its accuracy, whatever the range
    assert learning_curve_auc([(10, 0.4)], 10, 30) == pytest.approx(0.4)
    # points past the budget are cut at its end: 10..20 mean 0.55 (5.5) + 20..30 0.6..0.7 (6.5) = 0.6
    assert learning_curve_auc([(10, 0.5), (20, 0.6), (40, 0.8)], 10, 30) == pytest.approx(0.6)
    # no query range -> the last accuracy; no points -> nan
    assert learning_curve_auc([(10, 0.3), (10, 0.5)], 10, 10) == 0.5
    assert math.isnan(learning_curve_auc([], 10, 30))


def test_auc_counts_and_fractions_agree_and_bigger_is_better() -> None:
    pts = [(6, 0.4), (9, 0.55), (12, 0.7)]
    n = 40.0
    assert learning_curve_auc(pts, 6, 12) == pytest.approx(
        learning_curve_auc([(x / n, y) for x, y in pts], 6 / n, 12 / n)
    )
    # reaching the same final accuracy earlier (a bigger query per round) scores higher
    early = [(6, 0.4), (12, 0.7)]
    late = [(6, 0.4), (9, 0.4), (12, 0.7)]
    assert learning_curve_auc(early, 6, 12) > learning_curve_auc(late, 6, 12)


def test_round_metrics() -> None:
    rows = [
        {"round": 0, "num_labeled": 6, "label_fraction": 0.15, "test_accuracy": 0.5, "mask_rate": 0.1},
        {"round": 1, "num_labeled": 9, "label_fraction": 0.22, "test_accuracy": 0.7, "mask_rate": 0.2},
    ]
    m = round_metrics(rows, 6, 12)
    assert m["round"] == 1 and m["num_labeled"] == 9 and m["final_accuracy"] == 0.7 == m["test_accuracy"]
    assert m["auc"] == pytest.approx((3 * 0.6 + 3 * 0.7) / 6)


def test_fingerprint_ignores_where_it_runs() -> None:
    a = _cfg({"query.budget": [3]})
    b = load_config(None, ["resources.num_cpus=8", "loop.run_dir=/elsewhere", "tune.max_concurrent_trials=3"])
    b = ExperimentConfig(
        **{
            **b.__dict__,
            "tune": b.tune.__class__(search_space={"query.budget": [3]}, max_concurrent_trials=3),
        }
    )
    assert sweep_fingerprint(a) == sweep_fingerprint(b)
    c = ExperimentConfig(**{**a.__dict__, "tune": a.tune.__class__(search_space={"query.budget": [4]})})
    assert sweep_fingerprint(a) != sweep_fingerprint(c)
