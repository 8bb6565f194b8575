"""``python -m hssal_ray.assess``: the sample's hand-off (blind, reproducible, never redrawn over a
person's work), the estimate from a label file (the loop's rules: bad files change nothing), and the
refusals (an unfinished prediction, a map that changed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hssal_ray.assess.__main__ import main
from hssal_ray.assess.workflow import draw_sample, estimate_accuracy, read_map
from hssal_ray.errors import LabelFileError, StateError
from hssal_ray.prediction_files import PART_KEY

CLASSES = ["field", "forest", "water"]


def _prediction(root: Path, seed: int = 0, n: int = 300, round_idx: int = 2) -> tuple[Path, dict[str, str]]:
    """A prediction folder as ``hssal_ray.predict`` writes it, over ImageFolder-style ids; the truth."""
    weights = f"w{round_idx}"  # the run's weights' digest
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    pred = np.where(rng.random(n) < 0.85, truth, rng.integers(0, 3, n))
    ids = [f"{CLASSES[t]}/img{i:04d}.png" for i, t in enumerate(truth)]
    out = root / "pred"
    (out / "predictions.parquet").mkdir(parents=True, exist_ok=True)
    half = n // 2
    for k, sl in enumerate((slice(0, half), slice(half, n))):
        table = pa.table(
            {
                "sample_id": ids[sl],
                "class": [CLASSES[p] for p in pred[sl]],
                "class_id": pa.array(pred[sl], pa.int32()),
                "confidence": pa.array(np.full(len(ids[sl]), 0.9), pa.float32()),
            }
        )
        tag = json.dumps({"rows": table.num_rows, "weights": weights})
        pq.write_table(
            table.replace_schema_metadata({PART_KEY: tag.encode()}),
            out / "predictions.parquet" / f"part-{k:05d}.parquet",
        )
    info = {"run": str(root / "run"), "round": round_idx, "weights_digest": weights, "classes": CLASSES,
            "data": str(root / "nowhere"), "images": n, "chunks": 2, "bad_samples": 0}  # fmt: skip
    (out / "predict.json").write_text(json.dumps(info))
    return out, {s: CLASSES[t] for s, t in zip(ids, truth, strict=True)}


def _labels(assess: Path, truth: dict[str, str], path: Path, skip: int = 0, bad: bool = False) -> Path:
    rows = pq.read_table(assess / "sample.parquet").to_pylist()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "label"])
        for i, r in enumerate(rows):
            label = "" if i < skip else ("lake" if bad and i == 5 else truth[r["sample_id"]])
            w.writerow([r["ref"], label])
    return path


def test_sample_is_blind_reproducible_and_stratified(tmp_path: Path) -> None:
    pred, _ = _prediction(tmp_path)
    out = tmp_path / "assess"
    design = draw_sample(str(pred), str(out), 60, min_per_class=15, seed=1, images=False)
    sizes = read_map(str(pred)).sizes
    assert design["strata_sizes"] == sizes.tolist() and sum(design["sample_sizes"]) == 60
    assert min(design["sample_sizes"]) >= 15 and design["hide_sample_id"]  # ids name the class folder
    sample = pq.read_table(out / "sample.parquet").to_pylist()
    assert [r["rank"] for r in sample] == list(range(1, 61))
    template = (out / "sample" / "labels_template.csv").read_text().splitlines()
    assert template[0] == "ref,label" and "/" not in "".join(template)  # no id, so no class folder
    tasks = json.loads((out / "sample" / "label_studio_tasks.json").read_text())
    assert len(tasks) == 60 and not any("predictions" in t for t in tasks)  # the map's class is not shown
    assert not any(c in (out / "sample" / "contact_sheet.html").read_text() for c in ("field/", "water/"))
    assert "hssal_ray.assess estimate" in (out / "sample" / "INSTRUCTIONS.txt").read_text()
    # the same settings change nothing, not even a template being filled in place; other settings
    # are refused (a person may be labeling it)
    filled = out / "sample" / "labels_template.csv"
    filled.write_text(filled.read_text().replace(",\n", ",water\n", 3))
    before = filled.read_text()
    assert draw_sample(str(pred), str(out), 60, min_per_class=15, seed=1, images=False) == design
    assert pq.read_table(out / "sample.parquet").to_pylist() == sample and filled.read_text() == before
    with pytest.raises(StateError, match="seed 1 -> 2"):
        draw_sample(str(pred), str(out), 60, min_per_class=15, seed=2, images=False)
    with pytest.raises(ValueError, match="too small for a map of 3 classes"):
        draw_sample(str(pred), str(tmp_path / "tiny"), 5, images=False)


def test_estimate_from_the_filled_template(tmp_path: Path) -> None:
    pred, truth = _prediction(tmp_path)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 90, min_per_class=20, images=False)
    result = estimate_accuracy(str(out), str(_labels(out, truth, tmp_path / "l.csv")))
    mt = read_map(str(pred))
    true_oa = np.mean([CLASSES[c] == truth[s] for s, c in zip(mt.ids.to_pylist(), mt.class_id, strict=True)])
    oa = result["overall_accuracy"]
    assert oa["low"] <= true_oa <= oa["high"] and abs(oa["estimate"] - true_oa) < 0.1
    assert result["labeled"] == 90 and sum(map(sum, result["error_matrix_counts"])) == 90
    per = {c["class"]: c for c in result["per_class"]}
    assert sum(c["area_chips"]["estimate"] for c in per.values()) == pytest.approx(300)
    assert all(c["users_accuracy"]["low"] <= c["users_accuracy"]["estimate"] <= c["users_accuracy"]["high"]
               for c in per.values())  # fmt: skip
    saved = json.loads((out / "assessment.json").read_text())
    assert saved["overall_accuracy"] == oa
    assert "**Overall accuracy:" in (out / "assessment.md").read_text()
    assert (out / "sample" / "labels.csv").read_text().startswith("sample_id,label")


def test_a_bad_or_partial_label_file_changes_nothing(tmp_path: Path) -> None:
    pred, truth = _prediction(tmp_path)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 60, images=False)
    with pytest.raises(LabelFileError, match="lake"):
        estimate_accuracy(str(out), str(_labels(out, truth, tmp_path / "bad.csv", bad=True)))
    partial = _labels(out, truth, tmp_path / "partial.csv", skip=4)
    with pytest.raises(LabelFileError, match="--partial continue"):
        estimate_accuracy(str(out), str(partial))
    assert not (out / "assessment.json").exists() and not (out / "sample" / "labels.csv").exists()
    result = estimate_accuracy(str(out), str(partial), partial="continue")
    assert result["labeled"] == 56 and len(result["unlabeled"]) == 4


def test_a_changed_or_unfinished_map_is_refused(tmp_path: Path) -> None:
    pred, truth = _prediction(tmp_path)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 60, images=False)
    labels = _labels(out, truth, tmp_path / "l.csv")
    _prediction(tmp_path, seed=1, round_idx=3)  # predictions redone with other weights
    with pytest.raises(StateError, match="changed since the sample was drawn"):
        estimate_accuracy(str(out), str(labels))
    info = json.loads((pred / "predict.json").read_text())
    (pred / "predict.json").write_text(json.dumps({**info, "images": 400}))
    with pytest.raises(StateError, match="300 predictions for 400 readable images"):
        read_map(str(pred))
    (pred / "predict.json").write_text(json.dumps(info))
    read_map(str(pred))
    (pred / "predict.json").write_text(json.dumps({**info, "weights_digest": "new"}))  # stopped midway
    with pytest.raises(StateError, match="2 parts by other weights"):
        read_map(str(pred))
    with pytest.raises(StateError, match="not a finished prediction"):
        read_map(str(tmp_path))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, truth = _prediction(tmp_path)
    out = tmp_path / "assess"
    assert (
        main(["sample", str(pred), "--out", str(out), "--n", "45", "--min-per-class", "10", "--no-images"])
        == 0
    )
    assert "accuracy sample: 45 chips to label" in capsys.readouterr().out
    assert main(["estimate", str(out), "--labels", str(_labels(out, truth, tmp_path / "l.csv"))]) == 0
    assert "Overall accuracy" in capsys.readouterr().out
    assert main(["estimate", str(tmp_path / "nothing"), "--labels", str(tmp_path / "l.csv")]) == 2
    assert "holds no accuracy sample" in capsys.readouterr().err


def test_a_class_left_with_one_labeled_chip_reports_no_interval(tmp_path: Path) -> None:
    """--partial continue down to one labeled chip of a class: its standard errors are unknown; the
    report says so instead of failing, and a class with none labeled is a clear error."""
    pred, truth = _prediction(tmp_path)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 30, min_per_class=10, images=False)
    rows = pq.read_table(out / "sample.parquet").to_pylist()
    water = [r["ref"] for r in rows if r["map_class_id"] == 2]
    path = tmp_path / "some.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "label"])
        for r in rows:
            keep = r["map_class_id"] != 2 or r["ref"] == water[0]
            w.writerow([r["ref"], truth[r["sample_id"]] if keep else ""])
    result = estimate_accuracy(str(out), str(path), partial="continue")
    assert result["overall_accuracy"]["low"] is None and result["overall_accuracy"]["estimate"] is not None
    text = (out / "assessment.md").read_text()
    assert "no interval" in text and "**Overall accuracy:" in text
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "label"])
        w.writerows([r["ref"], "" if r["map_class_id"] == 2 else truth[r["sample_id"]]] for r in rows)
    with pytest.raises(ValueError, match=r"map classes \[2\] have chips in the map but none in the sample"):
        estimate_accuracy(str(out), str(path), partial="continue")


def test_plan_from_the_maps_confidence_then_draw_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``assess plan`` reads the map's class sizes and mean confidence (0.9 on every chip here), plans
    on them, and prints the ``sample`` command that draws the plan; a given accuracy overrides the
    confidence; it writes nothing."""
    from hssal_ray.assess.planning import plan_sample

    pred, _ = _prediction(tmp_path, n=3000)
    sizes = read_map(str(pred)).sizes
    before = sorted(p.name for p in pred.rglob("*"))
    assert main(["plan", str(pred), "--halfwidth", "0.03", "--min-per-class", "10", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    want = plan_sample(sizes, np.full(3, 0.9), halfwidth=0.03, min_per_class=10)
    assert plan["n"] == want.n and plan["min_per_class"] == 10
    assert [c["mean_confidence"] for c in plan["per_class"]] == pytest.approx([0.9] * 3)
    assert plan["lower"]["n"] > plan["n"] and plan["lower"]["overall_halfwidth"] > 0.03
    assert main(["plan", str(pred), "--halfwidth", "0.03", "--min-per-class", "10", "--accuracy", "0.8"]) == 0
    text = capsys.readouterr().out
    n_80 = plan_sample(sizes, np.full(3, 0.8), halfwidth=0.03, min_per_class=10).n
    assert f"**Label n = {n_80:,} chips**" in text and n_80 > want.n
    assert sorted(p.name for p in pred.rglob("*")) == before
    cmd = text.strip().splitlines()[-1].split("Draw it: ")[1].split()
    assert cmd[:4] == ["python", "-m", "hssal_ray.assess", "sample"]
    out = tmp_path / "assess"
    assert main([*[a.replace("ASSESS", str(out)) for a in cmd[3:]], "--no-images"]) == 0
    assert json.loads((out / "design.json").read_text())["n"] == n_80
    assert main(["plan", str(pred), "--halfwidth", "0.7"]) == 2
    assert "half-widths must be in (0, 0.5)" in capsys.readouterr().err


def _geo(pred: Path, pixel_m: tuple[float, float] = (10.0, 10.0)) -> None:
    """Give the prediction the geo columns predict writes for tiled chips (UTM, 256 px chips; the
    second part's pixels ``pixel_m[1]`` m)."""
    from hssal_ray.data.geo import polygon_coords, polygon_wkb

    parts = sorted((pred / "predictions.parquet").iterdir())
    for part, px in zip(parts, pixel_m, strict=True):
        t = pq.read_table(part)
        n = t.num_rows
        x0 = 500000.0 + np.arange(n) * 256 * px
        affine = np.stack(
            [np.full(n, px), np.zeros(n), x0, np.zeros(n), np.full(n, -px), np.full(n, 4.5e6)], 1
        )
        ring = polygon_coords([12.0, 12.01, 12.01, 12.0], [41.0, 41.0, 41.01, 41.01])
        t = (
            t.append_column("crs", pa.array(["EPSG:32633"] * n))
            .append_column("transform", pa.FixedSizeListArray.from_arrays(pa.array(affine.reshape(-1)), 6))
            .append_column("width", pa.array(np.full(n, 256), pa.int32()))
            .append_column("height", pa.array(np.full(n, 256), pa.int32()))
            .append_column("geometry", pa.array([polygon_wkb(ring)] * n))
        )
        pq.write_table(t.replace_schema_metadata(pq.read_schema(part).metadata), part)
    info = json.loads((pred / "predict.json").read_text())
    (pred / "predict.json").write_text(json.dumps({**info, "geo": True}))


def test_areas_in_square_kilometres_for_geo_chips_of_one_size(tmp_path: Path) -> None:
    """Geo-referenced chips of one ground size: each class's map area and error-adjusted area in km²
    (256 x 256 pixels of 10 m = 6.5536 km² a chip); chips of different sizes: areas in chips only."""
    pred, truth = _prediction(tmp_path)
    _geo(pred)
    out = tmp_path / "assess"
    design = draw_sample(str(pred), str(out), 60, min_per_class=10, images=False)
    assert design["chip_area_km2"] == pytest.approx(6.5536)
    r = estimate_accuracy(str(out), str(_labels(out, truth, tmp_path / "l.csv")))
    for c in r["per_class"]:
        assert c["map_km2"] == pytest.approx(c["map_chips"] * 6.5536)
        for k in ("estimate", "low", "high"):
            assert c["area_km2"][k] == pytest.approx(c["area_chips"][k] * 6.5536)
    text = (out / "assessment.md").read_text()
    assert "area, km² (95% CI)" in text and "One chip is 6.554 km²" in text
    mixed, truth2 = _prediction(tmp_path / "mixed")
    _geo(mixed, (10.0, 20.0))
    out2 = tmp_path / "assess2"
    assert draw_sample(str(mixed), str(out2), 60, min_per_class=10, images=False)["chip_area_km2"] is None
    r2 = estimate_accuracy(str(out2), str(_labels(out2, truth2, tmp_path / "l2.csv")))
    assert "area_km2" not in r2["per_class"][0] and "km²" not in (out2 / "assessment.md").read_text()


def _write_labels(path: Path, rows: list[dict], truth: dict[str, str], wrong: str | None = None) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "label"])
        for r in rows:
            label = truth[r["sample_id"]]
            if r["sample_id"] == wrong:  # another class than the truth
                label = CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
            w.writerow([r["ref"], label])
    return path


def test_extend_adds_a_batch_and_keeps_what_was_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--extend``: more chips of each class from those not drawn yet, in a new batch folder; the first
    batch's files untouched; a rerun changes nothing; the estimate reads one file per batch (a chip
    labeled twice must agree); an extension that died before its design was written is drawn again,
    the same."""
    pred, truth = _prediction(tmp_path, n=600)
    out = tmp_path / "assess"
    first = draw_sample(str(pred), str(out), 60, min_per_class=10, images=False)
    before = {p.name: p.read_bytes() for p in (out / "sample").iterdir()}
    batch1 = pq.read_table(out / "sample.parquet").to_pylist()
    with pytest.raises(StateError, match="add --extend"):
        draw_sample(str(pred), str(out), 150, min_per_class=10, images=False)
    with pytest.raises(StateError, match="other settings"):
        draw_sample(str(pred), str(out), 30, min_per_class=10, images=False, extend=True)
    design_before = (out / "design.json").read_bytes()
    d = draw_sample(str(pred), str(out), 150, min_per_class=10, images=False, extend=True)
    assert d["batches"] == ["sample", "sample_2"] and d["n"] == 150 and sum(d["sample_sizes"]) == 150
    assert all(b >= a for a, b in zip(first["sample_sizes"], d["sample_sizes"], strict=True))
    assert {p.name: p.read_bytes() for p in (out / "sample").iterdir()} == before
    rows = pq.read_table(out / "sample.parquet").to_pylist()
    batch2 = [r for r in rows if r["batch"] == "sample_2"]
    assert rows[: len(batch1)] == [{**r, "batch": "sample"} for r in batch1] and len(batch2) == 90
    assert len({r["sample_id"] for r in rows}) == 150 and len({r["ref"] for r in rows}) == 150
    per_class = np.bincount([r["map_class_id"] for r in rows], minlength=3)
    assert per_class.tolist() == d["sample_sizes"]
    text = (out / "sample_2" / "INSTRUCTIONS.txt").read_text()
    assert (
        "90 chips" in text and "sample/labels_template.csv" in text and "sample_2/labels_template.csv" in text
    )
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert draw_sample(str(pred), str(out), 150, min_per_class=10, images=False, extend=True)["n"] == 150
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot  # nothing redrawn

    f1 = _write_labels(tmp_path / "b1.csv", batch1, truth)
    with pytest.raises(LabelFileError):  # 90 chips unlabeled: refused under --partial wait
        estimate_accuracy(str(out), str(f1))
    assert not (out / "assessment.json").exists()
    f2 = _write_labels(tmp_path / "b2.csv", batch2, truth)
    assert main(["estimate", str(out), "--labels", str(f1), str(f2)]) == 0
    r = json.loads((out / "assessment.json").read_text())
    assert r["labeled"] == 150
    clash = _write_labels(tmp_path / "clash.csv", [*batch2, batch1[0]], truth, wrong=batch1[0]["sample_id"])
    with pytest.raises(LabelFileError, match="different labels"):
        estimate_accuracy(str(out), [str(f1), str(clash)])
    assert json.loads((out / "assessment.json").read_text()) == r

    # an extension killed after sample.parquet but before design.json: the next --extend draws it again
    (out / "design.json").write_bytes(design_before)
    again = draw_sample(str(pred), str(out), 150, min_per_class=10, images=False, extend=True)
    assert again["sample_sizes"] == d["sample_sizes"]
    assert pq.read_table(out / "sample.parquet").to_pylist() == rows


def test_extended_samples_estimate_the_map_without_bias() -> None:
    """Each class's chips after an extension are a simple random sample of the class: over many draws
    the overall accuracy estimated from sample + extension averages the map's true accuracy."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pred, truth = _prediction(root, n=400, seed=5)
        ids = read_map(str(pred)).ids.to_pylist()
        mt = read_map(str(pred))
        true_oa = np.mean([CLASSES[c] == truth[s] for s, c in zip(ids, mt.class_id, strict=True)])
        got = []
        for seed in range(30):
            out = root / f"a{seed}"
            draw_sample(str(pred), str(out), 24, min_per_class=6, seed=seed, images=False)
            draw_sample(str(pred), str(out), 60, min_per_class=6, seed=seed, images=False, extend=True)
            rows = pq.read_table(out / "sample.parquet").to_pylist()
            files = [
                _write_labels(root / f"{seed}_{b}.csv", [r for r in rows if r["batch"] == b], truth)
                for b in ("sample", "sample_2")
            ]
            got.append(estimate_accuracy(str(out), [str(f) for f in files])["overall_accuracy"]["estimate"])
        assert abs(np.mean(got) - true_oa) < 0.02, (np.mean(got), true_oa)


def test_plan_from_a_labeled_sample_then_extend_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plan --from ASSESS`` plans on the user's accuracies the labels measured (Jeffreys' estimate),
    keeps the assessment's floor, and prints the ``--extend`` command; that command adds the chips."""
    from hssal_ray.assess.planning import plan_sample

    pred, truth = _prediction(tmp_path, n=3000)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 60, min_per_class=10, images=False)
    assert main(["plan", "--from", str(out), "--halfwidth", "0.04"]) == 2
    assert "has no estimate yet" in capsys.readouterr().err
    estimate_accuracy(str(out), str(_labels(out, truth, tmp_path / "l.csv")))
    counts = np.asarray(json.loads((out / "assessment.json").read_text())["error_matrix_counts"], float)
    u = (np.diag(counts) + 0.5) / (counts.sum(axis=1) + 1)
    assert main(["plan", "--from", str(out), "--halfwidth", "0.04", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    want = plan_sample(read_map(str(pred)).sizes, u, halfwidth=0.04, min_per_class=10)
    assert plan["n"] == want.n > 60 and plan["min_per_class"] == 10
    assert plan["accuracy_from"] == "the labeled sample (60 chips)"
    assert [c["accuracy"] for c in plan["per_class"]] == pytest.approx(u.tolist())
    assert main(["plan", str(tmp_path), "--from", str(out)]) == 2
    assert "not " + str(tmp_path) in capsys.readouterr().err
    assert main(["plan", "--from", str(out), "--halfwidth", "0.04"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"Extend it by {want.n - 60:,} chips: python -m hssal_ray.assess sample ")
    assert main([*line.split(": ", 1)[1].split()[3:], "--no-images"]) == 0
    design = json.loads((out / "design.json").read_text())
    assert design["n"] == want.n and design["batches"] == ["sample", "sample_2"]
    assert main(["plan", "--from", str(out), "--halfwidth", "0.3"]) == 0
    assert "is large enough for the target" in capsys.readouterr().out


def _other_prediction(pred: Path, root: Path, flip: float, seed: int = 9) -> Path:
    """Another map of the same chips: ``pred`` with a share ``flip`` of its classes changed."""
    rng = np.random.default_rng(seed)
    other = root / "pred_other"
    (other / "predictions.parquet").mkdir(parents=True)
    for part in sorted((pred / "predictions.parquet").iterdir()):
        t = pq.read_table(part)
        cls = t.column("class_id").to_numpy().copy()
        change = rng.random(len(cls)) < flip
        cls[change] = (cls[change] + 1) % 3
        t = t.set_column(t.schema.get_field_index("class_id"), "class_id", pa.array(cls, pa.int32()))
        tag = json.dumps({"rows": t.num_rows, "weights": "w9"}).encode()
        pq.write_table(t.replace_schema_metadata({PART_KEY: tag}), other / "predictions.parquet" / part.name)
    info = json.loads((pred / "predict.json").read_text())
    (other / "predict.json").write_text(json.dumps({**info, "weights_digest": "w9", "round": 9}))
    return other


def test_another_map_of_the_same_chips_from_the_same_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``estimate --map PRED2``: the sample's labels assess another map of the same chips (Stehman's
    estimators on the sampled chips' classes in it); a map of other chips is refused before anything
    is written."""
    from hssal_ray.assess.other_map import estimate_other_map

    pred, truth = _prediction(tmp_path, n=600)
    other = _other_prediction(pred, tmp_path, flip=0.3)
    out = tmp_path / "assess"
    draw_sample(str(pred), str(out), 90, min_per_class=10, images=False)
    labels = _labels(out, truth, tmp_path / "l.csv")
    stranger, _ = _prediction(tmp_path / "else", seed=4)
    assert main(["estimate", str(out), "--labels", str(labels), "--map", str(stranger)]) == 2
    assert "is not a map of the chips" in capsys.readouterr().err and not (out / "assessment.json").exists()
    assert main(["estimate", str(out), "--labels", str(labels), "--map", str(other)]) == 0
    assert "(round 9): overall accuracy" in capsys.readouterr().out
    r = json.loads((out / "assessment-of-pred_other.json").read_text())
    first, second = read_map(str(pred)), read_map(str(other))
    rows = pq.read_table(out / "sample.parquet").to_pylist()
    pos = {s: i for i, s in enumerate(first.ids.to_pylist())}
    at = np.array([pos[x["sample_id"]] for x in rows])
    ref = np.array([CLASSES.index(truth[x["sample_id"]]) for x in rows])
    agree = float(np.mean(first.class_id == second.class_id))
    want = estimate_other_map(first.class_id[at], ref, second.class_id[at], first.sizes, second.sizes, agree)
    assert r["overall_accuracy"]["estimate"] == pytest.approx(want.overall)
    assert r["agreement_with_sampled_map"] == pytest.approx(agree) and 0.6 < agree < 0.8
    assert [c["users_accuracy"]["estimate"] for c in r["per_class"]] == pytest.approx(want.users.tolist())
    assert r["round"] == 9 and "Stehman" in (out / "assessment-of-pred_other.md").read_text()
    own = json.loads((out / "assessment.json").read_text())["overall_accuracy"]["estimate"]
    assert r["overall_accuracy"]["estimate"] < own  # the map with 30% of its classes changed is worse


def test_label_studio_without_a_token_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hssal_ray.assess.handoff import LabelStudioTarget

    pred, _ = _prediction(tmp_path)
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    target = LabelStudioTarget("http://127.0.0.1:9", token_env="NO_SUCH_TOKEN")
    with pytest.raises(ValueError, match="NO_SUCH_TOKEN is empty"):
        draw_sample(str(pred), str(tmp_path / "a"), 30, min_per_class=5, label_studio=target)
    assert not (tmp_path / "a").exists()
