"""The human oracle: hand-off files, pause, validated import."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from hssal_ray.errors import LabelFileError
from hssal_ray.oracle import (
    CONTACT_SHEET_FILE,
    INSTRUCTIONS_FILE,
    LABEL_CONFIG_FILE,
    LABELS_FILE,
    TASKS_FILE,
    TEMPLATE_FILE,
    HumanOracle,
)
from hssal_ray.oracle._images import to_rgb_uint8

CLASSES = ["beach", "forest & park", "river"]
IDS = ["s_b", "s_a", "s_c"]


def _load(sid: str) -> np.ndarray:
    if sid == "s_c":
        raise OSError("truncated file")
    return np.full((40, 30, 3), 200 if sid == "s_a" else 10, dtype=np.uint8)


@pytest.fixture
def round_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "run" / "round_002"
    rd.mkdir(parents=True)
    (rd / "query.csv").write_text("sample_id,rank,u,coarse_cluster\ns_b,1,0.9,3\ns_a,2,0.5,-1\ns_c,3,0.1,\n")
    return rd


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_request_writes_hand_off_files(round_dir: Path) -> None:
    oracle = HumanOracle(CLASSES, load_image=_load)
    oracle.request(str(round_dir), IDS, {"round": 2})
    run_dir = str(round_dir.parent)

    template = (round_dir / TEMPLATE_FILE).read_text()
    assert template == "sample_id,label\ns_b,\ns_a,\ns_c,\n"

    tasks = json.loads((round_dir / TASKS_FILE).read_text())
    assert [t["id"] for t in tasks] == [1, 2, 3]
    assert [t["data"]["sample_id"] for t in tasks] == IDS
    jpeg = base64.b64decode(tasks[0]["data"]["image"].split(",", 1)[1])
    assert tasks[0]["data"]["image"].startswith("data:image/jpeg;base64,") and jpeg[:3] == b"\xff\xd8\xff"
    assert [t["data"]["ref"] for t in tasks] == ["run:round_002:1", "run:round_002:2", "run:round_002:3"]
    assert all(t["data"]["hssal_run"] == "run" and t["data"]["hssal_batch"] == "round_002" for t in tasks)
    assert "predictions" not in tasks[0]  # no scores.parquet in this round
    assert tasks[2]["data"]["image"] == ""  # its image failed to load: logged, not fatal

    config = (round_dir / LABEL_CONFIG_FILE).read_text()
    assert (
        '<Choices name="label" toName="image"' in config and '<Choice value="forest &amp; park"/>' in config
    )

    sheet = (round_dir / CONTACT_SHEET_FILE).read_text()
    assert sheet.count("data:image/png;base64,") == 2 and "no image" in sheet
    assert "s_b" in sheet and "<b>#1</b>" in sheet and "u=0.9" in sheet and "forest &amp; park" in sheet

    text = (round_dir / INSTRUCTIONS_FILE).read_text()
    assert f"python -m hssal_ray.loop --resume {run_dir} --labels {round_dir / TEMPLATE_FILE}" in text
    assert "forest & park" in text and "round 2" in text and "case-sensitive" in text
    assert oracle.instructions(str(round_dir)) == text


def test_collect_waits_until_labels_are_imported(round_dir: Path, tmp_path: Path) -> None:
    oracle = HumanOracle(CLASSES, load_image=None)
    oracle.request(str(round_dir), IDS, {"run_dir": "runs/x y"})
    assert "--resume 'runs/x y' --labels" in (round_dir / INSTRUCTIONS_FILE).read_text()
    assert oracle.collect(str(round_dir), IDS) is None
    assert oracle.may_pause and oracle.source == "human"

    before = _snapshot(round_dir)
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,label\ns_b,Beach\ns_a,river\ns_zz,river\n")
    with pytest.raises(LabelFileError, match=r"line 2 \(sample_id 's_b'\): 'Beach', did you mean 'beach'"):
        oracle.import_labels(str(round_dir), IDS, str(bad))
    assert _snapshot(round_dir) == before  # nothing written on rejection
    assert oracle.collect(str(round_dir), IDS) is None

    good = tmp_path / "good.csv"
    good.write_text("sample_id,label\ns_c,river\ns_b,beach\ns_a,forest & park\n")
    ans = oracle.import_labels(str(round_dir), IDS, str(good))
    assert ans.labels == {"s_c": 2, "s_b": 0, "s_a": 1} and ans.source == "human"
    assert (
        round_dir / LABELS_FILE
    ).read_text() == "sample_id,label\ns_b,beach\ns_a,forest & park\ns_c,river\n"
    assert oracle.collect(str(round_dir), IDS) == ans


def test_partial_continue_and_label_studio_import(round_dir: Path, tmp_path: Path) -> None:
    oracle = HumanOracle(CLASSES, partial="continue")
    oracle.request(str(round_dir), IDS, None)
    export = tmp_path / "export.json"
    tasks = json.loads((round_dir / TASKS_FILE).read_text())
    tasks[0]["annotations"] = [{"result": [{"from_name": "label", "value": {"choices": ["river"]}}]}]
    export.write_text(json.dumps(tasks))
    ans = oracle.import_labels(str(round_dir), IDS, str(export))
    assert ans.labels == {"s_b": 2} and ans.missing == ["s_a", "s_c"]
    assert oracle.collect(str(round_dir), IDS) == ans


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="partial"):
        HumanOracle(CLASSES, partial="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicates"):
        HumanOracle(["a", "a"])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 9), dtype=np.uint8),
        np.ones((8, 9, 1), dtype=np.float32),
        np.random.rand(8, 9, 4),
        np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9),
        np.random.randint(0, 4000, (8, 9, 13)).astype(np.int32),
    ],
)
def test_images_of_any_layout_become_rgb_uint8(image: np.ndarray) -> None:
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (8, 9, 3) and rgb.dtype == np.uint8


def test_no_stray_temp_files(round_dir: Path) -> None:
    HumanOracle(CLASSES).request(str(round_dir), IDS, None)
    assert not [n for n in os.listdir(round_dir) if n.endswith(".tmp")]
