"""``python -m hssal_ray.export``: safetensors + model.json + ONNX with parity, and the stand-alone
reader in a fresh process (no run directory, no Ray, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hssal_ray.export import PARITY_ATOL, export, load_exported, main
from hssal_ray.predict import predict
from hssal_ray.run_model import eval_model, run_model
from tests.data.make_scenes import CLASSES, fake_run, two_scenes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    from hssal_ray.data.tile import tile

    root = tmp_path_factory.mktemp("exp")
    scenes = two_scenes(root / "scenes")
    tile([str(s) for s, _ in scenes], str(root / "chips"), size=32, classes=CLASSES, local=True)
    return root / "chips"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, chips):
    root = tmp_path_factory.mktemp("exported")
    run = fake_run(root / "run", chips, band_select=[4, 3, 1], value_range=[0, 4000], seed=3)
    return run, export(str(run), str(root / "out")), root / "out"


@pytest.mark.parametrize("frozen", [False, True])
def test_export_writes_weights_metadata_and_an_onnx_model_that_matches_torch(
    tmp_path, chips, exported, frozen
):
    if frozen:
        run = fake_run(tmp_path / "run", chips, frozen=True, band_select=[4, 3, 1], value_range=[0, 4000])
        out = tmp_path / "out"
        meta = export(str(run), str(out))
    else:
        run, meta, out = exported
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.onnx", "model.json", "classify.py"}
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert meta["classes"] == CLASSES and meta["source"]["round"] == 0
    assert meta["input"]["band_select"] == [4, 3, 1] and meta["input"]["value_range"] == [0, 4000]
    assert meta["architecture"]["kind"] == ("frozen_encoder" if frozen else "classifier")
    assert 0 <= meta["onnx"]["parity_max_abs_diff"] <= PARITY_ATOL
    model, _ = load_exported(str(out))
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        want = eval_model(run_model(str(run)))(x)
        np.testing.assert_allclose(model(x).numpy(), want.numpy(), atol=1e-5)
    import onnxruntime as ort

    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=PARITY_ATOL)


def test_the_reader_in_a_fresh_process_gives_the_predictions_of_the_run_model(tmp_path, chips, exported):
    run, _, model_dir = exported
    pred = predict(str(run), str(chips), str(tmp_path / "pred"), local=True, geojson=False)
    assert pred["predicted_now"] == 40
    table = pq.read_table(tmp_path / "pred" / "predictions.parquet")
    shard = pq.read_table(chips / "utm_scene" / "shard-00000.parquet")
    files = []
    for i, blob in enumerate(shard.column("image").to_pylist()[:6]):
        files.append(tmp_path / f"chip{i}.tif")
        files[-1].write_bytes(blob)
    check = (
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert not {'hssal_ray', 'ray', 'torch'} & set(sys.modules), sorted(sys.modules)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-W",
            "ignore",
            "-c",
            check,
            str(model_dir / "classify.py"),
            str(model_dir),
            *map(str, files),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    by_id = {r["sample_id"]: r for r in table.to_pylist()}
    assert len(lines) == 6
    for (_path, cls, conf), sid in zip(lines, shard.column("sample_id").to_pylist()[:6], strict=True):
        assert cls == by_id[sid]["class"]
        assert float(conf) == pytest.approx(by_id[sid]["confidence"], abs=1e-4)


def test_snippet_is_short_and_needs_no_package(tmp_path):
    from hssal_ray.export import SNIPPET

    code = [line for line in SNIPPET.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 20
    assert "hssal_ray" not in SNIPPET.replace('"""Classify chips with an exported hssal_ray model', "")


def test_a_run_without_a_trained_round_is_a_one_line_error(tmp_path, chips, capsys):
    run = fake_run(tmp_path / "run", chips)
    for f in (run / "round_000" / "checkpoint").iterdir():
        f.unlink()
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no trained round" in err and "\n" not in err
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "not a run directory" in capsys.readouterr().err
