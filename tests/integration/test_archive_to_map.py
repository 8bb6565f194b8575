"""From archive to map, end to end through the real commands: two GeoTIFF scenes (UTM and WGS84,
4 bands, uint16, nodata border) -> ``hssal_ray.data.tile`` (Ray tasks) -> a short loop with the
simulated oracle -> ``hssal_ray.export`` -> ``hssal_ray.predict`` (Ray Data) -> footprints checked
against the scenes' transforms, and the exported model checked against the run's own scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.data.geo import wkb_ring
from tests.data.make_scenes import CLASSES, block_classes, two_scenes
from tests.integration.conftest import REPO, cli_env, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

rasterio = pytest.importorskip("rasterio")
from rasterio.warp import transform as warp_points  # noqa: E402

CONFIG = """\
data: {{root: {chips}, bands: 3, band_select: [4, 3, 1], value_range: [0, 4000], image_size: 32}}
ssl: {{model: hssal_small_cnn, steps_per_round: 20, batch_size: 8, uratio: 2, eval_batch_size: 64}}
query: {{budget: 6}}
loop: {{name: geo, run_dir: {runs}, initial_labeled: 9, rounds: 2}}
resources: {{num_cpus: 2}}
"""


def _module(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_scenes_to_map(tmp_path: Path) -> None:
    scenes = two_scenes(tmp_path / "scenes", blocks=8)
    chips, runs = tmp_path / "chips", tmp_path / "runs"
    labels = [str(lab) for _, lab in scenes]
    out = _module(
        "hssal_ray.data.tile",
        *(str(s) for s, _ in scenes),
        "--out",
        str(chips),
        "--size",
        "32",
        "--classes",
        ",".join(CLASSES),
        "--label-rasters",
        *labels,
        "--num-cpus",
        "2",
    )
    assert "tiled 2 scene(s) into 112 chips" in out.stdout and "(16 skipped" in out.stdout

    cfg = tmp_path / "geo.yaml"
    cfg.write_text(CONFIG.format(chips=chips, runs=runs))
    run_cli("--config", str(cfg))
    run = runs / "geo"
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    batch = json.loads((run / "round_001" / "query.geojson").read_text())["features"]
    assert len(batch) == 6 and all(f["properties"]["guess"] in CLASSES for f in batch)

    _module("hssal_ray.export", str(run), "--out", str(tmp_path / "model"), "--round", "1")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["onnx"]["parity_inputs"] == "the run's images" and meta["classes"] == CLASSES

    pred = tmp_path / "pred"
    _module(
        "hssal_ray.predict",
        str(run),
        "--data",
        str(chips),
        "--out",
        str(pred),
        "--round",
        "1",
        "--num-cpus",
        "2",
    )
    table = pq.read_table(pred / "predictions.parquet")
    assert table.num_rows == 112
    rows = {r["sample_id"]: r for r in table.to_pylist()}

    # footprints against the scenes' own transforms (UTM and geographic)
    for scene, _ in scenes:
        with rasterio.open(scene) as src:
            mine = [r for r in rows.values() if r["scene"] == str(scene)]
            assert len(mine) == 56
            for r in mine:
                left, top = src.transform @ (r["col_off"], r["row_off"])
                right, bottom = src.transform @ (r["col_off"] + 32, r["row_off"] + 32)
                xs, ys = [left, right, right, left], [bottom, bottom, top, top]
                lon, lat = warp_points(src.crs, "EPSG:4326", xs, ys)
                ring = np.array(wkb_ring(r["geometry"]))[:-1]
                want = np.array(sorted(zip(lon, lat, strict=True)))
                np.testing.assert_allclose(np.array(sorted(map(tuple, ring))), want, atol=1e-9)
                w = r["bounds_wgs84"]  # densified: UTM edges bow in lon/lat, by centimetres here
                assert w[0] <= min(lon) + 1e-12 and w[2] >= max(lon) - 1e-12
                assert w[1] <= min(lat) + 1e-12 and w[3] >= max(lat) - 1e-12
                assert max(min(lon) - w[0], w[2] - max(lon), min(lat) - w[1], w[3] - max(lat)) < 1e-5
                truth = CLASSES[block_classes(8, 8)[r["row_off"] // 32, r["col_off"] // 32]]
                r["truth"] = truth
    geo = json.loads((pred / "predictions.geojson").read_text())
    assert len(geo["features"]) == 112
    # the map as a GeoTIFF per scene: each chip's class in the cell under its centre, in the scene's CRS
    for scene, _ in scenes:
        with rasterio.open(pred / "map" / f"{scene.stem}.tif") as ds, rasterio.open(scene) as src:
            assert ds.crs == src.crs and (ds.read(1) != ds.nodata).sum() == 56
            cls = ds.read(1)
            for r in (r for r in rows.values() if r["scene"] == str(scene)):
                assert (
                    cls[ds.index(*(src.transform @ (r["col_off"] + 16, r["row_off"] + 16)))] == r["class_id"]
                )

    # the predictions are the run's own: round 1's scores of the same chips
    scores = pq.read_table(run / "round_001" / "scores.parquet")
    for sid, probs in zip(
        scores.column("sample_id").to_pylist(), scores.column("probs").to_pylist(), strict=True
    ):
        assert rows[sid]["class_id"] == int(np.argmax(probs))
        assert rows[sid]["confidence"] == pytest.approx(max(probs), abs=1e-5)
    accuracy = np.mean([r["class"] == r["truth"] for r in rows.values()])
    assert accuracy > 0.8  # three well-separated spectral classes

    # how accurate is the map: a stratified sample handed over blind, labeled, estimated
    assess = tmp_path / "assess"
    _module(
        "hssal_ray.assess", "sample", str(pred), "--out", str(assess), "--n", "30", "--min-per-class", "5"
    )
    sample = pq.read_table(assess / "sample.parquet").to_pylist()
    feats = json.loads((assess / "sample" / "query.geojson").read_text())["features"]
    assert len(feats) == 30 and all(set(f["properties"]) == {"sample_id", "rank"} for f in feats)
    sheet = (assess / "sample" / "contact_sheet.html").read_text()
    assert sheet.count("<img ") == 30 and " N, " in sheet  # thumbnails with the run's bands, coordinates
    filled = tmp_path / "reference.csv"
    filled.write_text(
        "sample_id,label\n" + "".join(f"{r['sample_id']},{rows[r['sample_id']]['truth']}\n" for r in sample)
    )
    _module("hssal_ray.assess", "estimate", str(assess), "--labels", str(filled))
    oa = json.loads((assess / "assessment.json").read_text())["overall_accuracy"]
    assert oa["low"] <= accuracy <= oa["high"]
    # 10 m UTM chips and 1e-4 degree chips cover different ground: areas stay in chips
    assert json.loads((assess / "design.json").read_text())["chip_area_km2"] is None
    # every round's accuracy from the same labels: the sampled map's round gives the estimate's own figure
    _module("hssal_ray.assess", "curve", str(assess))
    curve = json.loads((assess / "curve.json").read_text())["rounds"]
    assert [c["round"] for c in curve] == [0, 1, 2] and curve[1]["change"] is not None  # predicted: round 1
    assert curve[1]["overall_accuracy"] == pytest.approx(oa)

    # and the exported model, in a fresh process without the package, gives the same classes
    shard = pq.read_table(chips / "wgs84_scene" / "shard-00000.parquet", columns=["sample_id", "image"])
    files = []
    for i, blob in enumerate(shard.column("image").to_pylist()[:8]):
        files.append(tmp_path / f"chip{i}.tif")
        files[-1].write_bytes(blob)
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-W",
            "ignore",
            str(tmp_path / "model" / "classify.py"),
            str(tmp_path / "model"),
            *map(str, files),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    for (_, cls, conf), sid in zip(got, shard.column("sample_id").to_pylist()[:8], strict=True):
        assert cls == rows[sid]["class"] and float(conf) == pytest.approx(rows[sid]["confidence"], abs=1e-4)
