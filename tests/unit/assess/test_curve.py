"""``assess curve``: every round's accuracy from the labels of one assessment sample (no Ray: the
rounds' models run in process), consistent with ``predict --round k`` and ``estimate --map``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.assess.__main__ import main
from hssal_ray.assess.curve import assess_curve, learning_curve
from hssal_ray.assess.workflow import draw_sample, estimate_accuracy, read_map
from hssal_ray.predict import predict
from tests.data.make_scenes import CLASSES, fake_run, two_scenes


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hssal_ray.data.tile import tile

    root = tmp_path_factory.mktemp("curve")
    scenes = two_scenes(root / "scenes")
    tile(
        [str(s) for s, _ in scenes],
        str(root / "chips"),
        size=32,
        classes=CLASSES,
        label_rasters=[str(lab) for _, lab in scenes],
        local=True,
    )
    return root / "chips"


def _two_rounds(chips: Path, root: Path, frozen: bool) -> Path:
    """A run with two trained rounds on ``chips`` (round 1's weights another seed's)."""
    kw = {"band_select": [4, 3, 1], "value_range": [0, 4000]}
    run = fake_run(root / "run", chips, frozen=frozen, **kw)
    other = fake_run(root / "other", chips, frozen=frozen, seed=3, **kw)
    shutil.copytree(other / "round_000" / "checkpoint", run / "round_001" / "checkpoint")
    return run


@pytest.fixture(scope="module")
def frozen_run(chips: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiled chips and a frozen run with two trained rounds."""
    return chips, _two_rounds(chips, tmp_path_factory.mktemp("frozen"), frozen=True)


def _truth(sid: str) -> str:
    """Reference labels for the test: a fixed class per chip position."""
    row, col = (int(v) for v in sid.rsplit("/", 1)[1].split("_"))
    return CLASSES[(row // 32 + 2 * (col // 32)) % 3]


def test_every_round_from_one_labeled_sample(frozen_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    chips, run = frozen_run
    maps = {k: tmp_path / f"pred{k}" for k in (0, 1)}
    for k, out in maps.items():
        predict(str(run), str(chips), str(out), round_idx=k, local=True, geojson=False, geotiff=False)
    assess = tmp_path / "assess"
    assert main(["curve", str(assess)]) == 2 and "has no estimate yet" in capsys.readouterr().err
    draw_sample(str(maps[1]), str(assess), 24, min_per_class=4, images=False)
    rows = pq.read_table(assess / "sample.parquet").to_pylist()
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(
            [["sample_id", "label"], *([r["sample_id"], _truth(r["sample_id"])] for r in rows)]
        )
    own = estimate_accuracy(str(assess), str(labels), other_maps=[str(maps[0])])
    r = assess_curve(str(assess))
    assert [x["round"] for x in r["rounds"]] == [0, 1] and r["labeled"] == 24
    # round 1 is the sampled map: its figures are the estimate's own
    assert r["rounds"][1]["overall_accuracy"] == pytest.approx(own["overall_accuracy"])
    # round 0 gives what `estimate --map` gives from round 0's whole prediction
    other = own["other_maps"][0]["overall_accuracy"]
    assert r["rounds"][0]["overall_accuracy"]["estimate"] == pytest.approx(other["estimate"])
    assert (
        r["rounds"][0]["overall_accuracy"]["low"],
        r["rounds"][0]["overall_accuracy"]["high"],
    ) == pytest.approx((other["low"], other["high"]))
    change = r["rounds"][1]["change"]
    assert change["estimate"] == pytest.approx(
        r["rounds"][1]["overall_accuracy"]["estimate"] - r["rounds"][0]["overall_accuracy"]["estimate"]
    )
    assert change["low"] < change["estimate"] < change["high"]
    assert json.loads((assess / "curve.json").read_text())["rounds"] == r["rounds"]
    assert (assess / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(r["rounds"][0]["per_class"]) == len(CLASSES)
    ua = [c["users_accuracy"]["estimate"] for c in r["rounds"][0]["per_class"]]
    assert ua == pytest.approx([c["users_accuracy"]["estimate"] for c in own["other_maps"][0]["per_class"]])
    assert main(["curve", str(assess), "--rounds", "0", "7"]) == 2 and "not of [7]" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [True, False])
def test_each_rounds_classes_are_predicts(chips: Path, tmp_path: Path, frozen: bool) -> None:
    """A frozen run's features computed once with each round's head, and a fine-tuned run's full model
    each round, give the classes `predict --round k` gives."""
    from hssal_ray.assess.curve import round_classes

    run = _two_rounds(chips, tmp_path / "runs", frozen=frozen)
    ids = sorted(pq.read_table(chips / "utm_scene" / "shard-00000.parquet").column("sample_id").to_pylist())[
        :20
    ]
    got = round_classes(str(run), [0, 1], str(chips), ids, str(tmp_path))
    for k in (0, 1):
        predict(
            str(run),
            str(chips),
            str(tmp_path / f"p{k}"),
            round_idx=k,
            local=True,
            geojson=False,
            geotiff=False,
        )
        mt = read_map(str(tmp_path / f"p{k}"))
        by_id = dict(zip(mt.ids.to_pylist(), mt.class_id.tolist(), strict=True))
        assert got[k].tolist() == [by_id[s] for s in ids]
    assert got[0].tolist() != got[1].tolist()  # two heads, two maps


def test_learning_curve_changes_are_paired() -> None:
    """The change between rounds is the mean of paired differences: two rounds that differ on few chips
    get an interval much narrower than either round's accuracy interval."""
    rng = np.random.default_rng(0)
    strata = np.repeat(np.arange(3), 40)
    ref = strata.copy()
    r0 = np.where(rng.random(120) < 0.8, ref, (ref + 1) % 3)
    r1 = r0.copy()
    fix = np.flatnonzero(r0 != ref)[:6]
    r1[fix] = ref[fix]  # round 1 fixes six chips, breaks none
    rows = learning_curve(strata, ref, {0: r0, 1: r1}, np.array([1000, 1000, 1000]))
    ch, oa = rows[1]["change"], rows[1]["overall_accuracy"]
    assert ch["changed"] == 6 and ch["estimate"] == pytest.approx(6 / 120)
    assert ch["high"] - ch["low"] < 0.6 * (oa["high"] - oa["low"])
    same = learning_curve(strata, ref, {0: r0, 1: r0.copy()}, np.array([1000, 1000, 1000]))[1]["change"]
    assert same["changed"] == 0 and (same["low"], same["high"]) == pytest.approx((-3 / 120, 3 / 120))


def test_the_archives_own_labels_stand_in_for_a_person(frozen_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``estimate --labels-from-archive`` (a labeled archive, the demo) gives what a file of the
    archive's labels gives; an archive without labels is a clear error."""
    from hssal_ray.data.catalog import scan
    from hssal_ray.errors import LabelFileError

    chips, run = frozen_run
    pred = tmp_path / "pred"
    predict(str(run), str(chips), str(pred), round_idx=0, local=True, geojson=False, geotiff=False)
    assess = tmp_path / "assess"
    draw_sample(str(pred), str(assess), 24, min_per_class=4, images=False)
    assert main(["estimate", str(assess), "--labels-from-archive"]) == 0
    got = json.loads((assess / "assessment.json").read_text())
    assert got["labels"].startswith("the archive's own labels") and got["labeled"] == 24
    cat = scan(str(chips), test_fraction=0.0)
    truth = dict(
        zip(cat.table.column("sample_id").to_pylist(), cat.table.column("label").to_pylist(), strict=True)
    )
    path = tmp_path / "l.csv"
    ids = pq.read_table(assess / "sample.parquet").column("sample_id").to_pylist()
    path.write_text("sample_id,label\n" + "".join(f"{s},{cat.class_names[truth[s]]}\n" for s in ids))
    by_file = estimate_accuracy(str(assess), str(path))
    assert by_file["overall_accuracy"] == got["overall_accuracy"]
    unlabeled, _ = _prediction_of_unlabeled(tmp_path)
    with pytest.raises(LabelFileError, match="have no label of the map's classes"):
        estimate_accuracy(str(unlabeled), None, from_archive=True)


def _prediction_of_unlabeled(root: Path) -> tuple[Path, Path]:
    """An assessment of a map of chips tiled without labels."""
    from hssal_ray.data.tile import tile

    scenes = two_scenes(root / "scenes2")
    chips = root / "chips2"
    tile([str(s) for s, _ in scenes], str(chips), size=32, classes=CLASSES, local=True)
    run = _two_rounds(chips, root / "runs2", frozen=True)
    pred = root / "pred2"
    predict(str(run), str(chips), str(pred), local=True, geojson=False, geotiff=False)
    out = root / "assess2"
    draw_sample(str(pred), str(out), 24, min_per_class=4, images=False)
    return out, pred
