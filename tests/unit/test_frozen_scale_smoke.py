"""``python -m benchmarks.frozen_scale --smoke``: the frozen path's scale benchmark on a toy store.

Runs the benchmark's own entry point in this process (2,000 rows, 32 dimensions, 10 steps) and
checks its result files: every step measured, the graph's recall, the store written by the
product's writer and removed afterwards. Numbers are not checked (toy size, shared machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.frozen_scale import main


def test_frozen_scale_smoke(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    assert main(["--smoke", "--work-dir", str(work), "--out", str(out)]) == 0
    data = json.loads((out / "frozen_scale_smoke.json").read_text())
    assert data["checks"] is None  # no 1M row: no targets to check
    (row,) = data["rows"]
    assert row["n"] == 2000 and row["train_rows"] == 1600 and row["labeled_r0"] == 32
    assert row["cold_start_picks"] == 32  # TypiClust at the same 2%
    assert row["graph_method"] == "exact" and row["graph_recall_at_10"] == 1.0
    want = {"open_store", "cold_start", "stats", "graph_build"}
    want |= {f"r{r}_{s}" for r in (0, 1) for s in ("train", "score", "query", "query_column", "evaluate")}
    assert set(row["steps"]) == want | {"r1_stability"}  # round 0 has no round before it
    for step in row["steps"].values():
        assert step["cpu_s"] >= 0 and step["wall_s"] >= 0 and step["peak_rss_mb"] > 0
    assert row["round_cpu_s"] == pytest.approx(
        sum(row["steps"][f"r1_{s}"]["cpu_s"] for s in ("train", "score", "stability", "query")), abs=0.02
    )
    r1 = row["rounds"]["r1"]  # the predictions of 1,600 - 32 - 10 unlabeled rows, round 1 against 0
    assert r1["stability_rows"] == 1600 - 32 - 10 and -1 <= r1["stability_kappa"] <= 1
    assert row["rounds"]["r1"]["picks"] == 10 and row["rounds"]["r0"]["graph_pool_rows"] == 1600 - 32
    assert not list(work.glob("store-*"))  # the synthetic store is removed after use
    md = (out / "frozen_scale_smoke.md").read_text()
    assert "| n | graph | recall@10 |" in md and "r1_score" in md
