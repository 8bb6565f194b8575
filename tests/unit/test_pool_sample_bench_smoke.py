"""``benchmarks.pool_sample --smoke``: the product's CLI with and without ``query.pool_sample``."""

from __future__ import annotations

import json

import pytest

from benchmarks import pool_sample

pytestmark = pytest.mark.ray  # the loop's Ray Data decode streams


def test_pool_sample_smoke_scores_the_sample_and_picks_inside_it(tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["--smoke", "--out", str(out), "--work-dir", str(tmp_path / "w"), "--run-dir", str(tmp_path / "r")]
    assert pool_sample.main(argv) == 0
    data = json.loads((out / "pool_sample_smoke.json").read_text())
    whole, sampled = data["runs"]
    assert (whole["sample"], sampled["sample"]) == (0, 0.1)
    n_train = whole["rounds"][0]["n_train"]
    for run, unlabeled in ((whole, n_train - 6), (sampled, round(0.1 * n_train))):
        (check,) = run["checks"]  # one query round (round 0's)
        assert check["picks_all_scored"] and check["picks"] == 6
        assert check["scored_rows"] == 6 + unlabeled
        assert run["cold_start_picks_all_scored"] and run["cold_start_picks"] == 6
    assert whole["cold_start_scored_rows"] == n_train  # the cold start: the split, or its draw
    assert sampled["cold_start_scored_rows"] == round(0.1 * n_train)
    assert "pool_sample=0.1" in (out / "pool_sample_smoke.md").read_text()
