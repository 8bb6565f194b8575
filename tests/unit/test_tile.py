"""Scenes -> chips (``python -m hssal_ray.data.tile``), in-process (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.data.catalog import scan
from hssal_ray.data.decode import decode_image
from hssal_ray.data.fetch import load_bytes
from hssal_ray.data.geo import EARTH_RADIUS_M, chip_areas_m2, chip_offsets, wkb_ring
from hssal_ray.data.tile import main, tile
from hssal_ray.errors import DataError
from tests.data.make_scenes import CLASSES, block_classes, two_scenes

rasterio = pytest.importorskip("rasterio")
from rasterio.warp import transform as warp_points  # noqa: E402
from rasterio.windows import Window  # noqa: E402


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("tile")
    scenes = two_scenes(root / "scenes")
    out = root / "chips"
    reports = tile(
        [str(s) for s, _ in scenes],
        str(out),
        size=32,
        label_rasters=[str(lab) for _, lab in scenes],
        classes=CLASSES,
        local=True,
    )
    return scenes, out, reports


def test_chip_offsets_cover_the_scene_and_shift_the_last_chip_to_the_edge():
    assert chip_offsets(100, 32, 32) == [0, 32, 64, 68]
    assert chip_offsets(96, 32, 32) == [0, 32, 64]
    assert chip_offsets(20, 32, 32) == []
    assert chip_offsets(64, 32, 16) == [0, 16, 32]


def test_chip_ground_areas_in_projected_and_geographic_crs():
    t = np.array(
        [[10, 0, 500000, 0, -10, 4500000], [1e-4, 0, 12, 0, -1e-4, 41], [0.3048, 0, 0, 0, -0.3048, 0]]
    )
    crs = ["EPSG:32633", "EPSG:4326", "EPSG:2263"]  # UTM metres, WGS84 degrees, NY state plane feet
    a = chip_areas_m2(crs, t, np.array([256, 32, 1000]), np.array([256, 32, 1000]))
    assert a[0] == pytest.approx(2560.0**2)
    side = np.radians(32e-4) * EARTH_RADIUS_M  # 32 pixels of 1e-4 degrees near 41 N
    assert a[1] == pytest.approx(side * side * np.cos(np.radians(41 - 16e-4)), rel=1e-6)
    us_foot = 1200 / 3937  # EPSG:2263's unit, the US survey foot, in metres
    assert a[2] == pytest.approx((0.3048 * 1000 * us_foot) ** 2, rel=1e-9)


def test_nodata_chips_are_skipped_and_counted(tiled):
    _, _, reports = tiled
    for r in reports:  # 5 x 5 chips; the left column is all nodata
        assert (r.chips, r.skipped_nodata, r.shards) == (20, 5, 1)


def test_rows_carry_window_crs_transform_bounds_and_footprint_that_match_the_scene(tiled):
    scenes, out, _ = tiled
    for (scene, _), sid in zip(scenes, ["utm_scene", "wgs84_scene"], strict=True):
        t = pq.read_table(out / sid / "shard-00000.parquet")
        assert pq.read_metadata(out / sid / "shard-00000.parquet").metadata[b"geo"]
        with rasterio.open(scene) as src:
            for row in t.to_pylist():
                assert row["sample_id"] == f"{sid}/{row['row_off']:06d}_{row['col_off']:06d}"
                assert row["crs"] == src.crs.to_string()
                x0, y0 = src.transform @ (row["col_off"], row["row_off"])
                x1, y1 = src.transform @ (row["col_off"] + 32, row["row_off"] + 32)
                assert row["transform"] == pytest.approx([src.res[0], 0, x0, 0, -src.res[1], y0])
                assert row["bounds"] == pytest.approx([x0, y1, x1, y0])
                ring = np.array(wkb_ring(row["geometry"]))
                lon, lat = warp_points(src.crs, "EPSG:4326", [x0, x1], [y1, y0])
                assert ring[:, 0].min() == pytest.approx(min(lon)) and ring[:, 0].max() == pytest.approx(
                    max(lon)
                )
                assert ring[:, 1].min() == pytest.approx(min(lat)) and ring[:, 1].max() == pytest.approx(
                    max(lat)
                )
                w = row["bounds_wgs84"]
                assert w[0] <= ring[:, 0].min() + 1e-9 and w[2] >= ring[:, 0].max() - 1e-9
                assert row["nodata_fraction"] == pytest.approx(4 / 32 if row["row_off"] == 0 else 0.0)
                truth = block_classes(5, 5)[row["row_off"] // 32, row["col_off"] // 32]
                assert row["label"] == truth and row["class_name"] == CLASSES[truth]


def test_chips_keep_bands_and_dtype_and_the_loop_decodes_them(tiled):
    scenes, out, _ = tiled
    cat = scan(str(out))
    assert cat.num_classes == 3 and len(cat) == 40 and cat.kind == "shards"
    rows = cat.table.slice(0, 4)
    blobs = load_bytes(cat.root, cat.kind, rows)
    import io

    import tifffile

    raw = tifffile.imread(io.BytesIO(blobs[0]))
    assert raw.dtype == np.uint16 and raw.shape == (4, 32, 32)
    sid = rows.column("sample_id")[0].as_py()
    r, c = (int(v) for v in sid.split("/")[1].split("_"))
    with rasterio.open(scenes[0][0]) as src:
        expect = src.read(window=Window(c, r, 32, 32))
    np.testing.assert_array_equal(raw, expect)
    img = decode_image(blobs[0], bands=3, select=[4, 3, 2], value_range=[0, 4000])
    assert img.shape == (3, 32, 32) and img.dtype == np.uint8


def test_a_rerun_skips_finished_scenes_and_redoes_an_interrupted_one(tiled, tmp_path):
    scenes, _, _ = tiled
    out = tmp_path / "chips"
    args = dict(size=32, classes=CLASSES, local=True)
    paths = [str(s) for s, _ in scenes]
    tile(paths, str(out), **args)
    (out / "wgs84_scene" / ".done.json").unlink()  # as if killed before the marker
    (out / "wgs84_scene" / "shard-00000.parquet").write_bytes(b"partial")
    before = (out / "utm_scene" / "shard-00000.parquet").stat().st_mtime_ns
    again = tile(paths, str(out), **args)
    assert [r.resumed for r in again] == [True, False]
    assert (out / "utm_scene" / "shard-00000.parquet").stat().st_mtime_ns == before
    assert pq.read_table(out / "wgs84_scene" / "shard-00000.parquet").num_rows == 20
    assert scan(str(out)).table["label"].to_pylist() == [-1] * 40  # no label rasters: unknown
    with pytest.raises(DataError, match="tiled with other settings"):
        tile(paths, str(out), **{**args, "size": 64})


def test_cli_tiles_and_bad_scenes_are_one_line_errors(tiled, tmp_path, capsys):
    scenes, _, _ = tiled
    out = tmp_path / "cli"
    assert main([str(scenes[0][0]), "--out", str(out), "--size", "64", "--stride", "32", "--local"]) == 0
    assert "tiled 1 scene(s) into" in capsys.readouterr().out
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main([str(bad), "--out", str(tmp_path / "x"), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot tile scene") and "\n" not in err
    assert (
        main([str(scenes[0][0]), "--out", str(tmp_path / "y"), "--local", "--label-rasters", "a", "b"]) == 2
    )
