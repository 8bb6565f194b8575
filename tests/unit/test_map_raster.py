"""The map as GeoTIFF rasters (``PRED/map/<scene>.tif``): the chip grid, and rasters made from real
tiled scenes whose every chip lands in the cell under its centre, in the scene's CRS (no Ray)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rasterio.transform import from_origin

from hssal_ray.data.geo import GEO_COLUMNS, chip_offsets
from hssal_ray.errors import StateError
from hssal_ray.map_raster import COLUMNS, LEGEND, cell_transform, grid_index, palette, write_map_rasters
from hssal_ray.prediction_files import PARTS
from tests.data.make_scenes import CLASSES, write_scene


def test_grid_index_gives_each_chip_its_own_cell() -> None:
    for length, size, stride in ((800, 256, 256), (800, 256, 128), (300, 256, 256), (1000, 64, 48)):
        offs = np.array(chip_offsets(length, size, stride))
        idx = grid_index(offs, stride)
        assert (idx == np.arange(len(offs))).all(), (length, size, stride, offs, idx)
    scene = from_origin(500000, 4500000, 10, 10)
    chip = scene @ scene.translation(512, 256)  # the chip at row 256, column 512
    t = cell_transform(list(chip)[:6], 256, 512, 256, 256)
    assert (t.c, t.f, t.a, t.e) == (500000, 4500000, 2560, -2560)  # cells are the chips
    t = cell_transform(list(chip)[:6], 256, 512, 256, 128)
    assert (t.c, t.f, t.a, t.e) == (500640, 4499360, 1280, -1280)  # chips own their central 128 px
    assert len(set(palette(30))) == 30


def _predictions(chips: Path, out: Path, classes_of: object) -> pa.Table:
    """A prediction folder of every tiled chip, as predict writes it (its geo columns)."""
    t = pa.concat_tables(
        pq.read_table(p, columns=["sample_id", *GEO_COLUMNS]) for p in sorted(chips.rglob("*.parquet"))
    )
    rows = t.to_pylist()
    cls = np.array([classes_of(r) for r in rows], dtype=np.int32)  # type: ignore[operator]
    conf = np.linspace(0.4, 1.0, len(rows)).astype(np.float32)
    pred = t.append_column("class_id", pa.array(cls)).append_column("confidence", pa.array(conf))
    (out / PARTS).mkdir(parents=True)
    pq.write_table(pred.slice(0, len(rows) // 2), out / PARTS / "part-00000.parquet")
    pq.write_table(pred.slice(len(rows) // 2), out / PARTS / "part-00001.parquet")
    return pred


@pytest.mark.parametrize("stride", [32, 16])
def test_rasters_of_tiled_scenes_put_every_chip_under_its_centre(tmp_path: Path, stride: int) -> None:
    import rasterio

    from hssal_ray.data.tile import tile

    scene, _ = write_scene(tmp_path / "utm.tif", "EPSG:32633", from_origin(500000, 4500000, 10, 10), blocks=6)
    chips = tmp_path / "chips"
    tile([str(scene)], str(chips), size=32, stride=stride, classes=CLASSES, local=True)
    pred = _predictions(chips, tmp_path / "pred", lambda r: (r["row_off"] // 7 + r["col_off"] // 5) % 3)
    s = write_map_rasters(str(tmp_path / "pred"), CLASSES, str(chips))
    assert (s["scenes"], s["chips"]) == (1, pred.num_rows)
    with rasterio.open(tmp_path / "pred" / "map" / "utm.tif") as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 2 and ds.res == (10.0 * stride, 10.0 * stride)
        assert ds.descriptions == ("class", "confidence_percent") and ds.nodata == 255
        assert ds.colormap(1)[1][:3] == palette(3)[1] and ds.tags(1)["class_2"] == CLASSES[2]
        cls, conf = ds.read(1), ds.read(2)
        assert (cls != 255).sum() == pred.num_rows  # one cell per chip, nodata elsewhere
        assert (cls == 255).any()  # the scene's nodata column was skipped by the tiler
        for r in pred.to_pylist():
            a, b, c, d, e, f = r["transform"]
            x, y = a * 16 + b * 16 + c, d * 16 + e * 16 + f  # the chip's centre
            row, col = ds.index(x, y)
            if r["row_off"] % stride == 0 and r["col_off"] % stride == 0:  # on the stride grid
                assert cls[row, col] == r["class_id"]
                assert conf[row, col] == round(r["confidence"] * 100)
            gr, gc = grid_index(np.array([r["row_off"], r["col_off"]]), stride)
            assert cls[gr, gc] == r["class_id"]
    with (tmp_path / "pred" / "map" / LEGEND).open() as fh:
        assert [row["class"] for row in csv.DictReader(fh)] == CLASSES


def test_without_the_tilers_record_the_grid_is_inferred_and_old_parts_are_refused(tmp_path: Path) -> None:
    import rasterio

    from hssal_ray.data.tile import DONE, tile

    scene, _ = write_scene(tmp_path / "s.tif", "EPSG:4326", from_origin(12.0, 41.0, 1e-4, 1e-4), blocks=6)
    chips = tmp_path / "chips"
    tile([str(scene)], str(chips), size=32, classes=CLASSES, local=True)
    (chips / "s" / DONE).unlink()  # an archive copied without its tiler's records
    pred = _predictions(chips, tmp_path / "pred", lambda r: 1)
    write_map_rasters(str(tmp_path / "pred"), CLASSES, str(chips))
    with rasterio.open(tmp_path / "pred" / "map" / "s.tif") as ds:
        assert ds.res == pytest.approx((32e-4, 32e-4)) and (ds.read(1) == 1).sum() == pred.num_rows
    old = tmp_path / "old"
    (old / PARTS).mkdir(parents=True)
    pq.write_table(pred.drop_columns(["transform"]), old / PARTS / "part-00000.parquet")
    with pytest.raises(StateError, match="has no transform"):
        write_map_rasters(str(old), CLASSES, str(chips))
    assert set(COLUMNS) <= set(pred.column_names)


def test_cli_rewrites_the_rasters_of_a_prediction_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from hssal_ray.data.tile import tile
    from hssal_ray.map_raster import main
    from hssal_ray.prediction_files import SUMMARY

    scene, _ = write_scene(tmp_path / "a.tif", "EPSG:32633", from_origin(500000, 4500000, 10, 10), blocks=4)
    chips = tmp_path / "chips"
    tile([str(scene)], str(chips), size=32, classes=CLASSES, local=True)
    pred = tmp_path / "pred"
    _predictions(chips, pred, lambda r: 2)
    assert main([str(pred)]) == 2 and "no predict.json" in capsys.readouterr().err
    (pred / SUMMARY).write_text(json.dumps({"classes": CLASSES, "data": str(chips)}))
    assert main([str(pred)]) == 0
    assert "1 scene(s)" in capsys.readouterr().out and (pred / "map" / "a.tif").stat().st_size > 0


def test_the_benchmarks_synthetic_prediction_is_what_the_rasters_read(tmp_path: Path) -> None:
    from benchmarks.map_raster import synthetic_prediction
    from hssal_ray.map_raster import main

    pred = synthetic_prediction(tmp_path, 1000, scenes=4, classes=5)
    assert main([str(pred)]) == 0
    tifs = sorted((pred / "map").glob("*.tif"))
    assert len(tifs) == 4
    import rasterio

    total = 0
    for t in tifs:
        with rasterio.open(t) as ds:
            total += int((ds.read(1) != ds.nodata).sum())
            assert ds.res == (2560.0, 2560.0)  # 256 px chips of 10 m
    assert total == 1000
