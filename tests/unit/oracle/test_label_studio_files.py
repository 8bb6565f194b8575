"""The file hand-off through Label Studio (issue 17, items 1-6), without a server.

The export shapes below are the ones Label Studio 1.23.2 writes (checked against a real server in
``tests/integration/test_label_studio.py``): CSV/TSV with one row per annotation and every data
field as a column; JSON_MIN with one object per annotation; JSON with the annotations of each task.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from hssal_ray.config import config_to_yaml, load_config
from hssal_ray.errors import ConfigError, LabelFileError
from hssal_ray.loop.runner import load_run_config, science_sha
from hssal_ray.oracle import (
    CONTACT_SHEET_FILE,
    LABEL_CONFIG_FILE,
    TASKS_FILE,
    TEMPLATE_FILE,
    HumanOracle,
    LabelStudioOracle,
    human_oracle_from_config,
    parse_label_file,
    reveals_folder,
)
from hssal_ray.oracle._images import image_data_uri, png_data_uri
from hssal_ray.query.scores_io import write_scores
from hssal_ray.state import LabeledSet

CLASSES = ["airplane", "beach", "forest"]
COLD = ["airplane/airplane00.jpg", "beach/beach00.jpg", "forest/forest00.jpg", "beach/beach07.jpg"]
ROUND0 = ["forest/forest03.jpg", "airplane/airplane22.jpg"]


def _truth(sid: str) -> str:
    return sid.split("/", 1)[0]


def _image(sid: str) -> np.ndarray:
    """A photo-like image: smooth gradients and texture (a PNG of it is large, a JPEG small)."""
    rng = np.random.default_rng(int(hashlib.sha256(sid.encode()).hexdigest()[:8], 16))
    y, x = np.mgrid[0:256, 0:256] / 256.0
    base = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y), np.sin(4 * x * y)], axis=-1) * 80 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _query(d: Path, ids: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{s},{i},0.5,1\n" for i, s in enumerate(ids, start=1))
    (d / "query.csv").write_text("sample_id,rank,u,coarse_cluster\n" + rows)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run whose cold start was labeled (except beach07, left unanswered) and round 0 is queried."""
    r = tmp_path / "ucm"
    _query(r / "cold_start", COLD)
    _query(r / "round_000", ROUND0)
    stored = {s: CLASSES.index(_truth(s)) for s in COLD[:3]}
    LabeledSet().with_round(0, stored, "human").save(str(r))
    return r


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _ls_csv(path: Path, rows: list[dict[str, object]], sep: str = ",") -> Path:
    """A Label Studio CSV/TSV export: sorted columns, every value quoted but the integer ids."""
    cols = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=sep, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    return path


def _flat(sid: str, label: str, task: int, annotation: int, **data: object) -> dict[str, object]:
    return {
        "annotation_id": annotation,
        "annotator": "1",
        "created_at": "2026-01-01T10:00:00Z",
        "id": task,
        "label": label,
        "lead_time": "",
        "updated_at": "2026-01-01T10:00:00Z",
        **({"sample_id": sid} if sid else {}),
        **data,
    }


def _full(sid: str | None, *labels: str | None, ref: str = "", task: int = 1) -> dict[str, object]:
    data: dict[str, object] = {"image": "data:image/jpeg;base64,/9j/", "rank": task}
    if sid:
        data["sample_id"] = sid
    if ref:
        data["ref"] = ref
    anns = [
        {"id": 10 * task + i, "was_cancelled": True, "result": []}
        if lab is None
        else {
            "id": 10 * task + i,
            "was_cancelled": False,
            "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [lab]}}
            ],
        }
        for i, lab in enumerate(labels)
    ]
    return {"id": task, "data": data, "annotations": anns, "predictions": []}


# ---------------------------------------------------------------- item 1: CSV field limit


@pytest.mark.parametrize("sep,name", [(",", "export.csv"), ("\t", "export.tsv")])
def test_item1_label_studio_csv_and_tsv_exports_with_embedded_images(
    tmp_path: Path, sep: str, name: str
) -> None:
    big = "data:image/png;base64," + "A" * 300_000  # > csv's default 131072-character field limit
    rows = [
        _flat("img_1", "beach", 1, 1, image=big, rank=1, hssal_run="r", hssal_batch="round_000"),
        _flat("img_2", "forest", 2, 2, image=big, rank=2, hssal_run="r", hssal_batch="round_000"),
    ]
    limit = csv.field_size_limit()
    ans = parse_label_file(
        str(_ls_csv(tmp_path / name, rows, sep)), query_ids=["img_1", "img_2"], class_names=CLASSES
    )
    assert ans.labels == {"img_1": 1, "img_2": 2}
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


# ---------------------------------------------------------------- item 2: one project, many rounds


def test_item2_reused_project_export_accepts_earlier_rounds_with_stored_labels(
    run: Path, tmp_path: Path
) -> None:
    export = [
        _full(COLD[0], "airplane", task=1),
        _full(COLD[1], "beach", task=2),
        _full(COLD[2], "forest", task=3),
        _full(COLD[3], "beach", task=4),  # unanswered in the cold start, answered later: ignored
        _full(ROUND0[0], "forest", task=5),
        _full(ROUND0[1], "airplane", task=6),
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    oracle = HumanOracle(CLASSES)
    ans = oracle.import_labels(str(run / "round_000"), ROUND0, str(path))
    assert ans.labels == {ROUND0[0]: 2, ROUND0[1]: 0}
    assert sorted(ans.already_labeled) == sorted(COLD[:3])
    (run / "round_000" / "labels.csv").unlink()

    before = _snapshot(run)
    export[1] = _full(COLD[1], "forest", task=2)  # an earlier answer changed afterwards
    export.append(_full("airplane/airplane99.jpg", "airplane", task=7))  # another run's task
    path.write_text(json.dumps(export))
    with pytest.raises(LabelFileError) as info:
        oracle.import_labels(str(run / "round_000"), ROUND0, str(path))
    msg = str(info.value)
    assert "samples of earlier rounds whose label differs from the one stored (1)" in msg
    assert "'beach/beach00.jpg'): 'forest', stored 'beach'" in msg
    assert "not in this round's query (nor in an earlier round's) (1)" in msg and "airplane99" in msg
    assert _snapshot(run) == before


# ---------------------------------------------------------------- item 3: hidden sample ids


def test_item3_hidden_sample_ids_never_reach_annotators_and_map_back(run: Path, tmp_path: Path) -> None:
    rd = run / "round_000"
    oracle = HumanOracle(CLASSES, load_image=_image, hide_sample_id=True)
    oracle.request(str(rd), ROUND0, {"round": 0})
    handed = "".join(
        (rd / f).read_text() for f in (TASKS_FILE, LABEL_CONFIG_FILE, TEMPLATE_FILE, CONTACT_SHEET_FILE)
    )
    for sid in ROUND0:
        assert sid not in handed and _truth(sid) + "/" not in handed
    tasks = json.loads((rd / TASKS_FILE).read_text())
    assert [t["data"]["ref"] for t in tasks] == ["ucm:round_000:1", "ucm:round_000:2"]
    assert '<Text name="ref" value="$ref"/>' in (rd / LABEL_CONFIG_FILE).read_text()
    assert (rd / TEMPLATE_FILE).read_text() == "ref,label\nucm:round_000:1,\nucm:round_000:2,\n"

    # every export shape carries the ref back: JSON, JSON_MIN, CSV (and the filled template)
    files = {
        "export.json": json.dumps(
            [
                _full(None, "forest", ref="ucm:round_000:1"),
                _full(None, "airplane", ref="ucm:round_000:2", task=2),
            ]
        ),
        "export_min.json": json.dumps(
            [
                {"ref": "ucm:round_000:2", "id": 2, "label": "airplane", "annotation_id": 3},
                {"ref": "ucm:round_000:1", "id": 1, "label": "forest", "annotation_id": 4},
            ]
        ),
        "template.csv": "ref,label\nucm:round_000:1,forest\nucm:round_000:2,airplane\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        ans = oracle.import_labels(str(rd), ROUND0, str(tmp_path / name))
        assert ans.labels == {ROUND0[0]: 2, ROUND0[1]: 0}, name
    (tmp_path / "bad.csv").write_text("ref,label\nother:round_000:1,forest\nucm:round_000:2,airplane\n")
    with pytest.raises(
        LabelFileError, match=r"task refs that belong to no batch of this run \(1\).*other:round_000:1"
    ):
        oracle.import_labels(str(rd), ROUND0, str(tmp_path / "bad.csv"))


def test_item3_hide_sample_id_default_auto_hides_folder_names() -> None:
    assert reveals_folder(["airplane/airplane22.jpg"]) and not reveals_folder(["img_001.png", "x.tif"])
    import pyarrow as pa

    assert reveals_folder(pa.chunked_array([["a.png"], ["b\\\\c.png"]])) and not reveals_folder(
        pa.array(["a.png"])
    )
    auto = load_config(None, ["oracle.kind=human"]).oracle
    assert auto.hide_sample_id == "auto"
    assert human_oracle_from_config(auto, CLASSES, None, COLD).hide_sample_id is True
    assert human_oracle_from_config(auto, CLASSES, None, ["a.png", "b.png"]).hide_sample_id is False
    shown = load_config(None, ["oracle.kind=human", "oracle.hide_sample_id=false"]).oracle
    assert human_oracle_from_config(shown, CLASSES, None, COLD).hide_sample_id is False


# ---------------------------------------------------------------- item 4: one conflict rule


def _conflict_files(tmp_path: Path, second: str) -> dict[str, Path]:
    full = [_full("img_1", "beach", second, task=1), _full("img_2", "forest", task=2)]
    flat = [_flat("img_1", "beach", 1, 11), _flat("img_1", second, 1, 12), _flat("img_2", "forest", 2, 21)]
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "min.json").write_text(json.dumps(flat))
    return {
        "Label Studio JSON": tmp_path / "full.json",
        "Label Studio JSON-MIN": tmp_path / "min.json",
        "CSV": _ls_csv(tmp_path / "e.csv", flat),
        "TSV": _ls_csv(tmp_path / "e.tsv", flat, "\t"),
    }


def test_item4_conflicts_are_rejected_and_agreement_counts_once_in_every_format(tmp_path: Path) -> None:
    for fmt, path in _conflict_files(tmp_path, "beach").items():
        ans = parse_label_file(str(path), query_ids=["img_1", "img_2"], class_names=CLASSES)
        assert ans.labels == {"img_1": 1, "img_2": 2}, fmt
    for fmt, path in _conflict_files(tmp_path, "forest").items():
        with pytest.raises(LabelFileError) as info:
            parse_label_file(str(path), query_ids=["img_1", "img_2"], class_names=CLASSES)
        msg = str(info.value)
        assert f"({fmt}) rejected" in msg and "conflicting answers for one sample (1)" in msg, msg
        assert "'beach'" in msg and "'forest'" in msg and "img_1" in msg and "img_2" not in msg, msg


# ---------------------------------------------------------------- item 5: messages


def test_item5_messages_name_the_format_the_skipped_tasks_and_the_exact_override(
    run: Path, tmp_path: Path
) -> None:
    rd = run / "round_000"
    oracle = HumanOracle(CLASSES)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([_full(ROUND0[0], None, task=1)]))  # skipped; the other task absent
    with pytest.raises(LabelFileError) as info:
        oracle.import_labels(str(rd), ROUND0, str(path))
    msg = str(info.value)
    assert "(Label Studio JSON) rejected" in msg
    assert (
        "tasks skipped in Label Studio (only cancelled annotations) (1): "
        "task #1 (id 1) (sample_id 'forest/forest03.jpg')" in msg
    )
    assert "'airplane/airplane22.jpg' (no task in the export)" in msg
    assert "label each in Label Studio" in msg and "add a row" not in msg
    command = f"python -m hssal_ray.loop --resume {run} --labels {path} oracle.partial=continue"
    assert command in msg and "config.yaml" in msg and "partial='continue'" not in msg

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"sample_id,label\n{ROUND0[0]},forest\n")
    with pytest.raises(
        LabelFileError, match=r"(?s)\(CSV\) rejected.*add a row with a class name for each"
    ) as info:
        oracle.import_labels(str(rd), ROUND0, str(csv_path))
    assert f"--labels {csv_path} oracle.partial=continue" in str(info.value)

    # the override the message names does what it says: saved with the run, science unchanged
    cfg = load_config(None, ["oracle.kind=human", f"loop.run_dir={tmp_path}", "loop.name=cfgrun"])
    (tmp_path / "cfgrun").mkdir()
    (tmp_path / "cfgrun" / "config.yaml").write_text(config_to_yaml(cfg))
    resumed = load_run_config(str(tmp_path / "cfgrun"), ["oracle.partial=continue"])
    assert resumed.oracle.partial == "continue" and science_sha(resumed) == science_sha(cfg)
    assert yaml.safe_load(config_to_yaml(resumed))["oracle"]["partial"] == "continue"
    ans = HumanOracle(CLASSES, partial="continue").import_labels(str(rd), ROUND0, str(csv_path))
    assert ans.labels == {ROUND0[0]: 2} and ans.missing == [ROUND0[1]]


def test_item5_instructions_speak_every_format_and_the_cli_override(run: Path) -> None:
    rd = run / "round_000"
    HumanOracle(CLASSES).request(str(rd), ROUND0, {"round": 0})
    text = (rd / "INSTRUCTIONS.txt").read_text()
    assert "JSON, JSON_MIN, CSV or TSV" in text and "oracle.partial=continue" in text
    assert "config.yaml" in text and "partial='continue'" not in text


# ---------------------------------------------------------------- item 6: JPEG data URIs


def test_item6_tasks_embed_jpeg_several_times_smaller_than_png(run: Path) -> None:
    img = _image("x")
    jpeg, png = image_data_uri(img, 256), png_data_uri(img, 256)
    assert jpeg.startswith("data:image/jpeg;base64,") and len(png) > 3 * len(jpeg)
    assert image_data_uri(img, 256, "png") == png
    with pytest.raises(ValueError, match="jpeg"):
        image_data_uri(img, 256, "gif")
    rd = run / "round_000"
    HumanOracle(CLASSES, load_image=_image).request(str(rd), ROUND0)
    jpeg_size = (rd / TASKS_FILE).stat().st_size
    assert all(
        t["data"]["image"].startswith("data:image/jpeg") for t in json.loads((rd / TASKS_FILE).read_text())
    )
    HumanOracle(CLASSES, load_image=_image, image_format="png").request(str(rd), ROUND0)
    assert (rd / TASKS_FILE).stat().st_size > 3 * jpeg_size


# ---------------------------------------------------------------- predictions, config, token


def test_tasks_carry_the_models_prediction_in_rank_order(run: Path) -> None:
    rd = run / "round_000"
    pool = [*ROUND0, "beach/beach01.jpg"]
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=np.float32)
    write_scores(str(rd / "scores.parquet"), pool, probs=probs, pred=np.array([2, 0, 1]), num_parts=2)
    HumanOracle(CLASSES).request(str(rd), list(reversed(ROUND0)), {"ranks": {ROUND0[0]: 1, ROUND0[1]: 2}})
    tasks = json.loads((rd / TASKS_FILE).read_text())
    assert [t["data"]["sample_id"] for t in tasks] == ROUND0  # by rank, not by argument order
    (p0,), (p1,) = tasks[0]["predictions"], tasks[1]["predictions"]
    assert p0["model_version"] == "hssal ucm/round_000" and p0["score"] == pytest.approx(0.7)
    assert p0["result"][0]["value"]["choices"] == ["forest"] and p1["result"][0]["value"]["choices"] == [
        "airplane"
    ]
    HumanOracle(CLASSES).request(str(run / "cold_start"), COLD)
    assert not any("predictions" in t for t in json.loads((run / "cold_start" / TASKS_FILE).read_text()))


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("oracle.url=localhost:8080", "oracle.url: must be an http:// or https:// URL"),
        ("oracle.url=http://me:secret@host:8080", "oracle.url: must not hold credentials"),
        ("oracle.token_env=0123abc-token", "oracle.token_env: must be the NAME of an environment variable"),
        ("oracle.project_id=0", "oracle.project_id: must be a Label Studio project id >= 1"),
        ("oracle.wait_s=-1", "oracle.wait_s: must be >= 0"),
        ("oracle.poll_s=0", "oracle.poll_s: must be >= 0.1"),
        ("oracle.image_format=gif", "oracle.image_format: got 'gif'; allowed values: jpeg, png"),
        ("oracle.image_size=8", "oracle.image_size: must be in [16, 4096]"),
        ("oracle.hide_sample_id=sometimes", "oracle.hide_sample_id: got 'sometimes'"),
        ("oracle.kind=labelstudio", "allowed values: simulated, human, label_studio"),
    ],
)
def test_oracle_config_rejects_bad_values(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_token_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, ["oracle.kind=label_studio", "oracle.token_env=HSSAL_TEST_LS_TOKEN"])
    monkeypatch.delenv("HSSAL_TEST_LS_TOKEN", raising=False)
    with pytest.raises(
        ConfigError, match=r"environment variable HSSAL_TEST_LS_TOKEN.*export HSSAL_TEST_LS_TOKEN="
    ):
        human_oracle_from_config(cfg.oracle, CLASSES, None, COLD)
    secret = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"
    monkeypatch.setenv("HSSAL_TEST_LS_TOKEN", secret)
    oracle = human_oracle_from_config(cfg.oracle, CLASSES, None, COLD)
    assert isinstance(oracle, LabelStudioOracle) and oracle.hide_sample_id
    assert secret not in repr(oracle) and secret not in repr(oracle.client)
    text = config_to_yaml(cfg)
    assert secret not in text and "token_env: HSSAL_TEST_LS_TOKEN" in text
    assert os.environ["HSSAL_TEST_LS_TOKEN"] == secret
