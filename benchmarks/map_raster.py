"""Time and memory of the map rasters (``hssal_ray.map_raster``) on an archive-sized prediction.

    python -m benchmarks.map_raster                 # 1M chips in 4 scenes of 500 x 500 chips
    python -m benchmarks.map_raster --chips 100000

Writes a synthetic prediction folder as ``python -m hssal_ray.predict`` writes it for a tiled archive
(10 parts with the geo columns the rasters read, ``predict.json``, and each scene's tiler record), then
times ``python -m hssal_ray.map_raster PRED`` as its own process (imports included): wall seconds, peak
RSS, and the size of the GeoTIFFs against the size of the Parquet parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import md_table, timed_process, write_result

__all__ = ["synthetic_prediction", "main"]


def synthetic_prediction(root: Path, chips: int, scenes: int = 4, classes: int = 12, size: int = 256) -> Path:
    """A prediction folder of ``chips`` chips on square scene grids (UTM, 10 m pixels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hssal_ray.prediction_files import PARTS, SUMMARY

    side = int(np.ceil(np.sqrt(chips / scenes)))
    rng = np.random.default_rng(0)
    pred = root / "pred"
    (pred / PARTS).mkdir(parents=True, exist_ok=True)
    rows_left, tables = chips, []
    for k in range(scenes):
        n = min(side * side, rows_left)
        rows_left -= n
        r, c = np.divmod(np.arange(n), side)
        x0, y0 = 500000.0 + k * side * size * 10, 4500000.0
        ids = [f"scene{k}/{a * size:06d}_{b * size:06d}" for a, b in zip(r, c, strict=True)]
        ones, zeros = np.ones(n), np.zeros(n)
        affine = np.stack(
            [10 * ones, zeros, x0 + c * size * 10.0, zeros, -10 * ones, y0 - r * size * 10.0], axis=1
        )
        tables.append(
            pa.table(
                {
                    "sample_id": ids,
                    "class_id": pa.array(rng.integers(0, classes, n), pa.int32()),
                    "confidence": pa.array(rng.random(n), pa.float32()),
                    "scene": [f"/data/scenes/scene{k}.tif"] * n,
                    "row_off": pa.array(r * size, pa.int32()),
                    "col_off": pa.array(c * size, pa.int32()),
                    "width": pa.array(np.full(n, size), pa.int32()),
                    "height": pa.array(np.full(n, size), pa.int32()),
                    "crs": ["EPSG:32633"] * n,
                    "transform": pa.FixedSizeListArray.from_arrays(pa.array(affine.reshape(-1)), 6),
                }
            )
        )
        done = root / "chips" / f"scene{k}"
        done.mkdir(parents=True, exist_ok=True)
        (done / ".done.json").write_text(json.dumps({"params": {"size": size, "stride": size}}))
    t = pa.concat_tables(tables)
    per = -(-t.num_rows // 10)
    for i in range(10):
        pq.write_table(t.slice(i * per, per), pred / PARTS / f"part-{i:05d}.parquet")
    info = {"classes": [f"class{i}" for i in range(classes)], "data": str(root / "chips")}
    (pred / SUMMARY).write_text(json.dumps(info))
    return pred


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.map_raster", description=__doc__.split("\n\n")[0])
    p.add_argument("--chips", type=int, default=1_000_000)
    p.add_argument("--work", default="runs/benchmarks/map_raster")
    args = p.parse_args(argv)
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    pred = synthetic_prediction(work, args.chips)
    r: dict[str, Any] = {"chips": args.chips, "scenes": 4}
    r.update(timed_process([sys.executable, "-m", "hssal_ray.map_raster", str(pred)]))
    r["geotiff_mb"] = sum(f.stat().st_size for f in (pred / "map").glob("*.tif")) / 2**20
    r["parquet_parts_mb"] = sum(f.stat().st_size for f in (pred / "predictions.parquet").glob("*")) / 2**20
    md = (
        f"`python -m hssal_ray.map_raster` on a synthetic prediction of {args.chips:,} chips in 4 scenes "
        "(its own process, imports included; the parts hold only the columns the rasters read, no "
        "footprints or top-k):\n\n"
        + md_table([r], ["chips", "scenes", "wall_s", "peak_rss_mb", "geotiff_mb", "parquet_parts_mb"])
        + "\n"
    )
    write_result("map_raster", r, md, module="benchmarks.map_raster")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
