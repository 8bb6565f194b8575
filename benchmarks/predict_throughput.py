"""Predict throughput: ``hssal_ray.predict`` against the loop's own scoring on the same chips.

``python -m benchmarks.predict_throughput [--chips 4000] [--size 64] [--model hssal_small_cnn]``

Generates (once, reused while the parameters match) 4-band uint16 GeoTIFF scenes under
``--work-dir`` and tiles them with :func:`hssal_ray.data.tile.tile`; writes a run directory with a
seeded random-init checkpoint of ``--model`` (what both paths load); starts one local Ray runtime;
then alternates, ``--repeats`` times, the loop's scoring stage
(:func:`hssal_ray.scoring.score_pool`, Ray Data actor pool, ``resources.executor=ray``) and
:func:`hssal_ray.predict.predict` (its Ray path: the same decode stream and actor pool, plus the
prediction columns, the geo join, the GeoParquet parts and the GeoJSON) over every chip, each from
scratch. Reports images/s of each call (wall, start-up of the actor pool included, as a user sees
it), the predict/score ratio of each pair and their median, and the driver's peak RSS during
predict (``VmHWM``, reset just before) and its growth over the RSS at the start of the call (what
predict itself adds; the start includes e.g. GDAL's block cache when the chips were just tiled
in this process). The target (issue 31) is a ratio >= 0.9. Wall times on a shared machine are
noisy: pairs run back to back so both sides see the same load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    md_table,
    setup_logging,
    start_local_ray,
    write_initial_checkpoint,
    write_result,
)

CLASSES = ["a", "b", "c"]


def make_chips(work: Path, chips: int, size: int, seed: int = 0) -> Path:
    """Scenes and their chips under ``work`` (reused when ``params.json`` matches)."""
    import rasterio
    from rasterio.transform import from_origin

    from hssal_ray.data.tile import tile

    params = {"chips": chips, "size": size, "seed": seed, "version": 1}
    out = work / "chips"
    if (work / "params.json").exists() and json.loads((work / "params.json").read_text()) == params:
        return out
    shutil.rmtree(work, ignore_errors=True)
    (work / "scenes").mkdir(parents=True)
    per_side = int(np.ceil(np.sqrt(chips / 4)))
    rng = np.random.default_rng(seed)
    scenes, left = [], chips
    for k in range(4):
        rows = min(per_side, -(-left // per_side))
        h, w = rows * size, per_side * size
        img = rng.integers(200, 4000, (4, h, w), dtype=np.uint16)
        path = work / "scenes" / f"scene{k}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=4,
            dtype="uint16",
            nodata=0,
            crs="EPSG:32633",
            transform=from_origin(500000 + k * 1e5, 4500000, 10, 10),
        ) as dst:
            dst.write(img)
        scenes.append(str(path))
        left -= rows * per_side
        if left <= 0:
            break
    tile(scenes, str(out), size=size, classes=CLASSES, local=True, rows_per_shard=1000)
    (work / "params.json").write_text(json.dumps(params))
    return out


def make_run(work: Path, chips: Path, size: int, model: str, actors: int, num_cpus: int) -> tuple[Path, Any]:
    """A run directory whose round 0 checkpoint is a seeded random ``model``."""
    from hssal_ray.config import config_from_dict, config_to_yaml

    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    cfg = config_from_dict(
        {
            "data": {
                "root": str(chips),
                "bands": 3,
                "band_select": [4, 3, 2],
                "value_range": [0, 4000],
                "image_size": size,
            },
            "ssl": {"model": model, "eval_batch_size": 64},
            "loop": {"run_dir": str(work), "name": "run"},
            "resources": {"num_cpus": num_cpus, "score_actors": actors, "executor": "ray"},
        }
    )
    write_initial_checkpoint(cfg, str(run / "round_000" / "checkpoint"), len(CLASSES))
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    (run / "classes.json").write_text(json.dumps(CLASSES))
    return run, cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; writes ``<out>/predict_throughput.json`` and ``.md``."""
    from benchmarks._sampler import peak_mb, reset_peak_rss

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.predict_throughput", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--chips", type=int, default=4000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--model", default="hssal_small_cnn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--work-dir", default="/tmp/hssal_predict_bench")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--predict-only", action="store_true", help="no scoring (driver memory of predict at a size)"
    )
    args = p.parse_args(argv)
    setup_logging()
    from hssal_ray.data.catalog import scan
    from hssal_ray.predict import predict
    from hssal_ray.scoring import score_pool

    work = Path(args.work_dir)
    chips = make_chips(work, args.chips, args.size)
    run, cfg = make_run(work, chips, args.size, args.model, args.actors, args.num_cpus)
    cat = scan(str(chips), test_fraction=0.0)
    start_local_ray(args.num_cpus)
    rows = []
    for i in range(args.repeats):
        shutil.rmtree(work / "scores", ignore_errors=True)
        t0 = time.perf_counter()
        if not args.predict_only:
            score_pool(
                cfg,
                cat.table,
                root=cat.root,
                kind=cat.kind,
                ckpt_dir=str(run / "round_000" / "checkpoint"),
                num_classes=len(CLASSES),
                run_dir=str(run),
                out_path=str(work / "scores"),
            )
        score_s = time.perf_counter() - t0
        shutil.rmtree(work / "pred", ignore_errors=True)
        reset_peak_rss()
        start_mb = peak_mb()
        t0 = time.perf_counter()
        s = predict(str(run), str(chips), str(work / "pred"), actors=args.actors)
        pred_s = time.perf_counter() - t0
        assert s["predicted_now"] == len(cat)
        rows.append(
            {
                "repeat": i,
                "images": len(cat),
                "score_img_s": len(cat) / score_s if not args.predict_only else None,
                "predict_img_s": len(cat) / pred_s,
                "ratio": score_s / pred_s if not args.predict_only else None,
                "predict_driver_start_mb": start_mb,
                "predict_driver_peak_mb": peak_mb(),
                "predict_driver_growth_mb": peak_mb() - start_mb,
            }
        )
        print(json.dumps(rows[-1]))
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    ratio = statistics.median(ratios) if ratios else float("nan")
    payload = {
        "rows": rows,
        "median_ratio": ratio,
        "target_ratio": 0.9,
        "met": ratio >= 0.9,
        "params": vars(args),
    }
    md = md_table(
        rows,
        [
            "repeat",
            "images",
            "score_img_s",
            "predict_img_s",
            "ratio",
            "predict_driver_peak_mb",
            "predict_driver_growth_mb",
        ],
    )
    if ratios:
        md += f"\n\nMedian predict/score throughput ratio: {ratio:.2f} (target >= 0.9).\n"
    name = "predict_memory" if args.predict_only else "predict_throughput"
    write_result(name, payload, md, module="benchmarks.predict_throughput", out_dir=args.out)
    if ratios:
        print(f"median ratio predict/score: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
