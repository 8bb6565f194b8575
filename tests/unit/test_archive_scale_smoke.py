"""``python -m benchmarks.archive_scale --smoke``: generate -> scan -> score -> HAL on 2,000 images.

Runs the real CLI in a subprocess and checks the result files' structure and that the scores hold
every generated id exactly once. Numbers are not checked (tiny runs on a shared machine).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks._archive_data import _tiles, image_array, sample_id
from benchmarks.archive_scale import MODULE
from tests._env import REPO, cli_env


def test_generated_images_are_distinct_pngs() -> None:
    """Pixel (0, 0) carries the index: images of the same tile and roll still differ; PNG round-trips."""
    from PIL import Image

    from benchmarks._archive_data import N_TILES, _encode_png

    tiles = _tiles(0, 32)
    idx = [0, 1, N_TILES, 32 * N_TILES, 32 * 32 * N_TILES, 5 * 32 * 32 * N_TILES + 7]
    arrays = [image_array(tiles, i) for i in idx]
    assert len({a.tobytes() for a in arrays}) == len(idx)
    assert all(a.shape == (32, 32, 3) and a.dtype == np.uint8 for a in arrays)
    back = np.asarray(Image.open(io.BytesIO(_encode_png(arrays[-1]))))
    assert np.array_equal(back, arrays[-1])
    assert sorted(sample_id(i) for i in (10, 9, 100)) == [sample_id(9), sample_id(10), sample_id(100)]


@pytest.mark.ray
@pytest.mark.slow  # ~1 min of Ray start-up and scoring; the benchmark itself runs it
def test_archive_scale_smoke(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, "-m", MODULE, "--smoke", "--work-dir", str(work), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    data = json.loads((out / "archive_scale_smoke.json").read_text())
    assert MODULE in data["command"] and "--smoke" in data["command"]
    assert data["device"]["usable_cpus"] >= 1 and data["date"].endswith("+00:00")
    assert len(data["load_avg_before"]) == 3 and len(data["load_avg_after"]) == 3
    assert data["failures"] == {} and data["checks"] is None  # one size: no 1M/100k ratios
    (row,) = data["rows"]
    assert row["size"] == 2000 and row["ids_ok"] is True
    for key in (
        "score_s",
        "img_s",
        "query_s",
        "driver_peak_mb",
        "driver_excl_emb_mb",
        "emb_mb",
        "worker_max_rss_mb",
    ):
        assert isinstance(row[key], float) and row[key] > 0, key
    (run,) = data["runs"]
    assert run["emb_mb"] == pytest.approx(2000 * run["embed_dim"] * 2 / 2**20, abs=0.01)
    assert {"scan", "warmup", "score", "query"} <= set(run["stages"])
    assert run["stages"]["query"]["picks"] == run["stages"]["query"]["distinct_picks"] == 100
    md = (out / "archive_scale_smoke.md").read_text()
    assert "| size | score_s | img_s | query_s |" in md and "## Checks" in md

    # the scores hold every generated id exactly once, and so do the shards
    expected = [sample_id(i) for i in range(2000)]
    scores = pq.read_table(run["scores_path"], columns=["sample_id"])["sample_id"].to_pylist()
    assert len(scores) == 2000 and sorted(scores) == expected
    shards = sorted(Path(run["archive"]["root"]).glob("shard-*.parquet"))
    ids = [s for p in shards for s in pq.read_table(p, columns=["sample_id"])["sample_id"].to_pylist()]
    assert ids == expected
    blobs = [b for p in shards for b in pq.read_table(p, columns=["image"])["image"].to_pylist()]
    assert len(set(blobs)) == 2000  # distinct encoded files
