"""benchmarks.hierarchy_scale on a tiny pool: both strategies measured at each budget."""

from __future__ import annotations

import pytest

from benchmarks.hierarchy_scale import measure, recipe, recipe_with, table
from benchmarks.query_speed import make_data


@pytest.mark.slow
def test_measure_and_table_on_a_tiny_pool(tmp_path) -> None:
    paths = make_data(4000, 32, seed=0, out=tmp_path)
    rows = measure(paths, 4000, [40, 80])
    assert [(r["strategy"], r["budget"]) for r in rows] == [
        ("hal", 40),
        ("hal_flat", 40),
        ("hal", 80),
        ("hal_flat", 80),
    ]
    assert all(r["params"] == recipe() and r["measured"] == "measured" for r in rows)
    assert recipe()["pick"] == "auto" and recipe()["alloc_over"] == "global"  # read from the profile
    lines = table(rows)
    assert [x["budget"] for x in lines] == [40, 80]
    assert all(x["HAL s"] > 0 and x["flat s"] > 0 for x in lines)
    assert lines[0]["flat / HAL"] == round(rows[1]["seconds"] / rows[0]["seconds"], 1)


@pytest.mark.slow
def test_a_late_round_picks_uncertain_and_runs_the_copy_check(tmp_path) -> None:
    from hssal_ray.config import load_config

    paths = make_data(4000, 32, seed=0, out=tmp_path)
    q = load_config("configs/ucm_cpu.yaml", ["query.copy_check=late"]).query
    params = {**recipe(), "copy_check": q.copy_check}
    rows = measure(paths, 4000, [40], params, late=10)
    assert all(r["pick"] == "uncertain" and r["boundary"] is not None for r in rows)
    assert [r["params"]["copy_check"] for r in rows] == ["late", "late"]
    plain = measure(paths, 4000, [40], late=0)  # no labels: typical, and no copy check
    assert all(r["pick"] == "typical" for r in plain)
    assert table(rows)[0]["picks replaced HAL / flat"] == (
        f"{rows[0]['boundary']['n_replaced']} / {rows[1]['boundary']['n_replaced']}"
    )


def test_set_changes_any_query_key_and_refuses_others() -> None:
    params = recipe_with(["query.coarse_fit=candidates", "query.typical_scale=global"])
    assert params["coarse_fit"] == "candidates" and params["typical_scale"] == "global"  # not in recipe()
    assert {k: v for k, v in params.items() if k not in ("coarse_fit", "typical_scale")} == {
        k: v for k, v in recipe().items() if k != "typical_scale"
    }
    with pytest.raises(ValueError, match="query.KEY=VALUE"):
        recipe_with(["ssl.steps_per_round=5"])
