"""``python -m benchmarks.cold_start_scale --smoke``: TypiClust capped and plain on a toy pool."""

from __future__ import annotations

import json
from pathlib import Path


def test_cold_start_scale_smoke(tmp_path: Path) -> None:
    from benchmarks.cold_start_scale import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cold_start_scale_smoke.json").read_text())
    capped, plain = data["rows"]
    assert (capped["variant"], plain["variant"]) == ("capped", "plain")
    assert capped["budget"] == plain["budget"] == 600
    assert (capped["clusters"], plain["clusters"]) == (500, 600)  # the cap, and one cluster a pick
    for r in (capped, plain):
        assert (
            r["classes_covered"] == r["classes"] == 21 and r["cpu_s"] > 0 and 0 < r["largest_class_share"] < 1
        )
    assert data["plain_over_capped_cpu"] > 0
    assert "plain / capped CPU time" in (tmp_path / "cold_start_scale_smoke.md").read_text()
