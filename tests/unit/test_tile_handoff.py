"""The query hand-off of geo-referenced chips: ``query.geojson`` beside ``query.csv``, and the
coordinates in the contact sheet and the Label Studio tasks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from hssal_ray.data.catalog import scan
from hssal_ray.data.geo import wkb_ring
from hssal_ray.loop.query_files import write_query
from hssal_ray.oracle._handoff import coordinates_text, read_coordinates
from tests.data.make_scenes import CLASSES, two_scenes


@pytest.fixture(scope="module")
def geo_run(tmp_path_factory):
    from hssal_ray.data.tile import tile

    root = tmp_path_factory.mktemp("handoff")
    scenes = two_scenes(root / "scenes")
    tile([str(s) for s, _ in scenes], str(root / "chips"), size=32, classes=CLASSES, local=True)
    run = root / "run"
    run.mkdir()
    cat = scan(str(root / "chips"))
    cat.save(str(run / "manifest.parquet"))
    (run / "classes.json").write_text(json.dumps(CLASSES))
    return run, cat


def _scores(rd, ids):
    probs = np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (len(ids), 1))
    t = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "probs": pa.array(list(probs), pa.list_(pa.float32())),
            "pred": pa.array(np.ones(len(ids), np.int32)),
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(t, rd / "scores.parquet")


def test_query_geojson_has_footprints_rank_uncertainty_and_guess(geo_run):
    run, cat = geo_run
    ids = [cat.table.column("sample_id")[i].as_py() for i in (5, 30, 2)]  # both scenes
    rd = run / "round_001"
    rd.mkdir()
    _scores(rd, ids)
    write_query(str(rd), ids, [0.5, 0.25, 0.125], [0, 1, 0])
    doc = json.loads((rd / "query.geojson").read_text())
    assert [f["properties"]["sample_id"] for f in doc["features"]] == ids
    shards = {}
    import pyarrow.parquet as pq

    for name in ("utm_scene", "wgs84_scene"):
        for r in pq.read_table(run.parent / "chips" / name / "shard-00000.parquet").to_pylist():
            shards[r["sample_id"]] = r
    for rank, f in enumerate(doc["features"], start=1):
        p = f["properties"]
        assert p["rank"] == rank and p["guess"] == "water" and p["guess_probability"] == pytest.approx(0.7)
        assert f["geometry"]["coordinates"][0] == wkb_ring(shards[p["sample_id"]]["geometry"])
        assert p["crs"] == shards[p["sample_id"]]["crs"]
    assert [f["properties"]["u"] for f in doc["features"]] == [0.5, 0.25, 0.125]
    where = read_coordinates(str(rd))
    ring = np.array(doc["features"][0]["geometry"]["coordinates"][0][:-1])
    assert where[ids[0]] == coordinates_text(ring[:, 0].mean(), ring[:, 1].mean())
    assert where[ids[0]].endswith(" E") and " N, " in where[ids[0]]


def test_cold_start_batch_without_scores_still_gets_footprints(geo_run):
    run, cat = geo_run
    ids = cat.table.column("sample_id").to_pylist()[:4]
    d = run / "cold_start"
    write_query(str(d), ids, None, None)
    feats = json.loads((d / "query.geojson").read_text())["features"]
    assert len(feats) == 4 and all(f["properties"]["guess"] is None for f in feats)


def test_contact_sheet_and_label_studio_tasks_show_the_coordinates(geo_run):
    from hssal_ray.oracle.human import HumanOracle

    run, cat = geo_run
    ids = cat.table.column("sample_id").to_pylist()[10:13]
    rd = run / "round_002"
    write_query(str(rd), ids, None, None)
    oracle = HumanOracle(CLASSES, load_image=lambda sid: np.zeros((8, 8, 3), np.uint8))
    oracle.request(str(rd), ids, {"run_dir": str(run)})
    tasks = json.loads((rd / "label_studio_tasks.json").read_text())
    where = read_coordinates(str(rd))
    assert [t["data"]["coordinates"] for t in tasks] == [where[s] for s in ids]
    sheet = (rd / "contact_sheet.html").read_text()
    assert all(where[s] in sheet for s in ids)


def test_image_folder_runs_have_no_geojson(tmp_path):
    run = tmp_path / "run"
    (run / "round_001").mkdir(parents=True)
    write_query(str(run / "round_001"), ["a/1.png"], None, None)
    assert (run / "round_001" / "query.csv").exists() and not (run / "round_001" / "query.geojson").exists()
