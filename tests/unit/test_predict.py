"""``python -m hssal_ray.predict`` in process (``--local``, no Ray): prediction columns, geo outputs,
resuming per chunk, and a non-geo archive."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.data.geo import wkb_ring
from hssal_ray.predict import main, predict, predictions_table
from tests.data.make_scenes import CLASSES, fake_run, two_scenes


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from hssal_ray.data.tile import tile

    root = tmp_path_factory.mktemp("pred")
    scenes = two_scenes(root / "scenes")
    tile([str(s) for s, _ in scenes], str(root / "chips"), size=32, classes=CLASSES, local=True)
    run = fake_run(root / "run", root / "chips", band_select=[4, 3, 1], value_range=[0, 4000])
    return root / "chips", run


def test_predictions_table_orders_the_top_k_classes():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    t = predictions_table(["a", "b"], probs, CLASSES, top_k=2).to_pylist()
    assert [r["class"] for r in t] == ["water", "forest"]
    assert [r["class_id"] for r in t] == [1, 0]
    assert t[0]["top_classes"] == ["water", "urban"] and t[1]["top_classes"] == ["forest", "urban"]
    assert t[0]["top_probs"] == pytest.approx([0.7, 0.2]) and t[0]["confidence"] == pytest.approx(0.7)
    assert predictions_table(["a"], probs[:1], CLASSES, top_k=9).column("top_probs").type.list_size == 3


def test_geo_archive_gives_geoparquet_and_geojson_footprints_of_every_chip(archive, tmp_path):
    chips, run = archive
    out = tmp_path / "pred"
    s = predict(str(run), str(chips), str(out), local=True)
    assert (s["images"], s["predicted_now"], s["chunks"], s["geojson_features"]) == (40, 40, 2, 40)
    parts = out / "predictions.parquet"
    table = pq.read_table(parts)
    shards = pq.read_table(chips / "utm_scene" / "shard-00000.parquet").to_pylist()
    shards += pq.read_table(chips / "wgs84_scene" / "shard-00000.parquet").to_pylist()
    by_id = {r["sample_id"]: r for r in shards}
    assert sorted(table.column("sample_id").to_pylist()) == sorted(by_id)
    for r in table.to_pylist():
        chip = by_id[r["sample_id"]]
        assert r["geometry"] == chip["geometry"] and r["crs"] == chip["crs"]
        assert (r["row_off"], r["col_off"], r["scene"]) == (chip["row_off"], chip["col_off"], chip["scene"])
        assert r["class"] == CLASSES[r["class_id"]] and r["confidence"] == pytest.approx(r["top_probs"][0])
        assert r["top_probs"] == sorted(r["top_probs"], reverse=True)
    geo = json.loads(pq.read_schema(parts / "part-00000.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    fc = json.loads((out / "predictions.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 40
    f0 = fc["features"][0]
    assert f0["geometry"]["coordinates"][0] == wkb_ring(by_id[f0["properties"]["sample_id"]]["geometry"])
    assert json.loads((out / "predict.json").read_text())["images"] == 40
    # the map as one GeoTIFF per scene, in its CRS, each chip's class in the cell under its centre
    import rasterio

    assert s["map_rasters"]["scenes"] == 2 and sorted(p.name for p in (out / "map").iterdir()) == [
        "legend.csv",
        "utm_scene.tif",
        "wgs84_scene.tif",
    ]
    for scene, epsg in (("utm_scene", 32633), ("wgs84_scene", 4326)):
        with rasterio.open(out / "map" / f"{scene}.tif") as ds:
            assert ds.crs.to_epsg() == epsg
            cls = ds.read(1)
            rows = [r for r in table.to_pylist() if r["sample_id"].startswith(scene + "/")]
            assert (cls != ds.nodata).sum() == len(rows)
            for r in rows:
                a, b, c, d, e, f = r["transform"]
                assert cls[ds.index(a * 16 + b * 16 + c, d * 16 + e * 16 + f)] == r["class_id"]


def test_a_rerun_predicts_only_chunks_without_a_valid_part(archive, tmp_path):
    chips, run = archive
    out = tmp_path / "pred"
    predict(str(run), str(chips), str(out), local=True, geojson=False)
    p0, p1 = (out / "predictions.parquet" / f"part-0000{i}.parquet" for i in (0, 1))
    before = p0.stat().st_mtime_ns
    p1.write_bytes(b"killed mid-write")
    s = predict(str(run), str(chips), str(out), local=True, geojson=False)
    assert s["predicted_now"] == 20 and p0.stat().st_mtime_ns == before
    assert pq.read_table(out / "predictions.parquet").num_rows == 40
    ckpt = run / "round_000" / "checkpoint" / "ema.safetensors"  # other weights: everything again
    from safetensors.torch import load_file, save_file

    w = load_file(str(ckpt))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in w.items()}, str(ckpt))
    try:
        assert predict(str(run), str(chips), str(out), local=True, geojson=False)["predicted_now"] == 40
    finally:
        save_file(w, str(ckpt))


def test_an_image_folder_archive_has_predictions_without_geo_columns(archive, tmp_path, capsys):
    from PIL import Image

    _, geo_run = archive
    folder = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    (folder / "water" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    assert predict(str(geo_run), str(folder), str(out), local=True)["predicted_now"] == 0  # RGB has no band 4
    assert "band count" in (out / "bad_samples.csv").read_text()
    out, run = tmp_path / "pred_rgb", fake_run(tmp_path / "rgb_run", folder)
    assert main([str(run), "--data", str(folder), "--out", str(out), "--local", "--chunk-rows", "4"]) == 0
    assert "predicted 9 of 10 images" in capsys.readouterr().out
    t = pq.read_table(out / "predictions.parquet")
    assert t.num_rows == 9 and "geometry" not in t.column_names
    assert len(list((out / "predictions.parquet").iterdir())) == 3
    assert not (out / "predictions.geojson").exists()
    assert "water/broken.png" in (out / "bad_samples.csv").read_text()
    assert main([str(run), "--data", str(tmp_path / "missing"), "--out", str(out), "--local"]) == 2


def _batch(ids):
    import pyarrow as pa

    return pa.table({"sample_id": pa.array(ids, pa.string())})


def test_route_groups_an_ordered_stream_into_chunks_with_missing_rows_and_empty_chunks():
    from hssal_ray.data.pipeline import route

    chunks = [["a1", "a2", "a3"], ["b1", "b2"], ["c1"], ["d1", "d2"], ["e1"]]
    # a2 failed to decode; chunk c and chunk e came back empty; batches straddle chunk boundaries
    stream = [_batch(["a1"]), _batch(["a3", "b1", "b2"]), _batch(["d1", "d2"])]
    seen = []
    out = [
        (k, None if t is None else t.column("sample_id").to_pylist())
        for k, t in route(stream, chunks, seen.append)
    ]
    assert out == [(0, ["a1", "a3"]), (1, ["b1", "b2"]), (2, None), (3, ["d1", "d2"]), (4, None)]
    assert seen == [1, 3, 2]


def test_in_order_sets_preserve_order_only_inside_and_restores_it_after_an_error():
    from ray.data import DataContext

    from hssal_ray.data.pipeline import in_order

    opts = DataContext.get_current().execution_options
    was = opts.preserve_order
    try:
        opts.preserve_order = False
        with in_order():
            assert opts.preserve_order is True
        assert opts.preserve_order is False
        with pytest.raises(KeyError), in_order():
            raise KeyError("a failed stream")
        assert opts.preserve_order is False
    finally:
        opts.preserve_order = was


def test_route_refuses_a_stream_out_of_chunk_order():
    from hssal_ray.data.pipeline import route
    from hssal_ray.errors import DataError

    with pytest.raises(DataError, match="in no pending chunk"):
        list(route([_batch(["b1", "a1"])], [["a1"], ["b1"]]))
