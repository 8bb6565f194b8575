"""``benchmarks.seed_pool``: seeds of several label-efficiency results pooled, and a 5-seed run's chances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.seed_pool import main, pass_chance, pool_summaries


def _result(path: Path, methods: dict[str, dict[str, list[float]]], budgets=(10, 20, 30)) -> Path:
    summary = {m: {"num_labeled": list(budgets), "per_seed": seeds} for m, seeds in methods.items()}
    path.write_text(json.dumps({"summary": summary}))
    return path


def test_seeds_of_one_method_come_from_several_results_and_conflicts_are_refused(tmp_path: Path) -> None:
    a = _result(
        tmp_path / "a.json", {"hssal": {"0": [0.5, 0.8, 0.9], "1": [0.5, 0.7, 0.9]}, "x": {"0": [0, 0, 0]}}
    )
    b = _result(tmp_path / "b.json", {"hssal": {"2": [0.5, 0.6, 0.7]}, "ssl_margin": {"0": [0.5, 0.7, 0.8]}})
    s = pool_summaries([f"{a}:hssal", f"{b}:hssal,ssl_margin"])
    assert sorted(s["hssal"]["per_seed"]) == ["0", "1", "2"] and "x" not in s  # only the methods named
    assert list(s["ssl_margin"]["per_seed"]) == ["0"]
    c = _result(tmp_path / "c.json", {"hssal": {"1": [0.5, 0.7, 0.95]}})
    with pytest.raises(ValueError, match="seed 1 differs"):
        pool_summaries([f"{a}:hssal", f"{c}:hssal"])
    d = _result(tmp_path / "d.json", {"ssl_margin": {"5": [0.5, 0.6]}}, budgets=(10, 20))
    with pytest.raises(ValueError, match="budgets"):
        pool_summaries([f"{b}:ssl_margin", f"{d}:ssl_margin"])
    with pytest.raises(ValueError, match="has no 'badge'"):
        pool_summaries([f"{a}:badge"])
    with pytest.raises(ValueError, match="expected RESULT.json"):
        pool_summaries([str(a)])


def test_pass_chance_draws_the_same_seeds_for_every_cell() -> None:
    up = np.ones((8, 3))
    assert pass_chance({"a": up, "b": up})["all"] == 1.0
    assert pass_chance({"a": up, "b": -up})["all"] == 0.0
    # one seed of two is behind by more than the other is ahead: a 1-seed run passes half the time,
    # a 2-seed run when it does not draw the bad seed twice (1/4) nor once (1/2) -> 1/4
    d = np.array([[1.0], [-3.0]])
    assert pass_chance({"a": d}, n_seeds=1)["all"] == pytest.approx(0.5, abs=0.02)
    assert pass_chance({"a": d}, n_seeds=2)["all"] == pytest.approx(0.25, abs=0.02)
    # two methods whose bad seeds differ never pass together at one seed
    assert pass_chance({"a": d, "b": d[::-1]}, n_seeds=1)["all"] == 0.0
    with pytest.raises(ValueError, match="same seeds"):
        pass_chance({"a": up, "b": up[:3]})


def test_cli_writes_the_table_and_the_chance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    h = {str(s): [0.5, *(0.8 + rng.normal(0, 0.01, 2))] for s in range(6)}
    m = {s: [0.5, v[1] - 0.02, v[2] - 0.02] for s, v in h.items()}  # 2 points behind on every seed
    r = _result(tmp_path / "r.json", {"hssal": h, "ssl_margin": m}, budgets=(10, 20, 30))
    assert main([f"{r}:hssal,ssl_margin", "--name", "toy", "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out.md").read_text()
    assert "# toy" in text and "+2.00 ± 0.00" in text and "ahead" in text and "**1.00**" in text
    assert json.loads((tmp_path / "out.json").read_text())["pass_chance"]["all"] == 1.0
    assert main([f"{r}:nope"]) == 2 and "error:" in capsys.readouterr().err


def test_a_variant_is_compared_with_the_profile_under_another_name(tmp_path: Path) -> None:
    h = {str(s): [0.5, 0.80, 0.90] for s in range(4)}
    variant = _result(tmp_path / "v.json", {"hssal": h, "hssal_flat": {s: [0.5, 0.79, 0.89] for s in h}})
    profile = _result(tmp_path / "p.json", {"hssal": {s: [0.5, 0.81, 0.91] for s in h}})
    s = pool_summaries([f"{variant}:hssal,hssal_flat", f"{profile}:hssal=profile"])
    assert sorted(s) == ["hssal", "hssal_flat", "profile"]
    assert s["hssal"]["per_seed"]["0"] == [0.5, 0.80, 0.90] and s["profile"]["per_seed"]["0"] == [
        0.5,
        0.81,
        0.91,
    ]
    out = tmp_path / "out"
    args = [f"{variant}:hssal,hssal_flat", f"{profile}:hssal=profile", "--out", str(out)]
    assert main([*args, "--not-in-chance", "profile"]) == 0
    res = json.loads((tmp_path / "out.json").read_text())
    rows = {r["HSSAL minus"]: r for r in res["rows"]}
    assert rows["profile"]["curve [95% CI]"].startswith("-1.00") and rows["profile"]["P(every budget)"] == "—"
    assert res["pass_chance"]["all"] == 1.0  # ahead of its flat variant on every seed; the profile left out
    assert main(args) == 0
    assert json.loads((tmp_path / "out.json").read_text())["pass_chance"]["all"] == 0.0  # behind the profile
    assert main([*args, "--not-in-chance", "nope"]) == 2


def test_any_method_can_stand_in_the_hssal_column_and_the_error_says_how(tmp_path: Path) -> None:
    h = {str(s): [0.5, 0.80, 0.90] for s in range(3)}
    flat = _result(tmp_path / "f.json", {"hssal_flat": h})
    ref = _result(tmp_path / "r.json", {"hssal": {s: [0.5, 0.79, 0.89] for s in h}})
    with pytest.raises(ValueError, match=r"no result gives 'hssal'.*RESULT.json:hssal_flat=hssal"):
        pool_summaries([f"{flat}:hssal_flat", f"{ref}:hssal=profile"])
    s = pool_summaries([f"{flat}:hssal_flat=hssal", f"{ref}:hssal=profile"])
    assert s["hssal"]["per_seed"]["0"] == [0.5, 0.80, 0.90] and sorted(s) == ["hssal", "profile"]
