"""The label-efficiency benchmark's report names the dataset it ran on and the size of its test split.

The benchmark itself takes about 30 minutes; here its trials are replaced by fixed metrics rows
(``start`` and ``run_grid`` stubbed), and everything after them (split size, report, plot) is real.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path
from typing import Any

import pytest

import benchmarks.label_efficiency as le
from hssal_ray.config import load_config
from hssal_ray.data.synthetic import make_synthetic_rs


def test_dataset_name_and_split_wording() -> None:
    assert le.dataset_name("../shared/data/siri_whu") == "siri_whu"
    assert le.dataset_name("/data/my archive/") == "my archive"
    assert le.dataset_name("s3://bucket/rs/nwpu") == "nwpu"
    assert le.dataset_name("../shared/data/siri_whu", "SIRI-WHU") == "SIRI-WHU"
    assert le.evaluated_on(0.0, 560) == "test split (560 images)"
    assert le.evaluated_on(0.2, 336) == "validation split (20% of train, 336 images)"


def _fake_grid(
    base: Any, name: str, run_dir: str, space: dict[str, list[Any]], **_: Any
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    full = name.endswith("_full")
    rows = (
        [{"round": 0, "num_labeled": 40, "test_accuracy": 0.9, "test_accuracy_online": 0.9}]
        if full
        else [
            {
                "round": r,
                "num_labeled": 2 + 2 * r,
                "test_accuracy": 0.5 + 0.1 * r,
                "test_accuracy_online": 0.5,
            }
            for r in range(3)
        ]
    )
    return {key: rows for key in product(*space.values())}


@pytest.mark.parametrize("dataset_name", [None, "SIRI-WHU"])
def test_report_and_plot_name_the_dataset_used_and_its_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset_name: str | None
) -> None:
    root = make_synthetic_rs(str(tmp_path / "siri_whu"), num_classes=4, per_class=10, size=16)
    base = load_config(None, [f"data.root={root}", "data.test_fraction=0.3"])
    monkeypatch.setattr(le, "start", lambda args: (base, str(tmp_path / "runs"), 0.0, 28))
    monkeypatch.setattr(le, "run_grid", _fake_grid)
    out = tmp_path / "out"
    argv = ["--data", root, "--seeds", "1", "--out", str(out), "--methods", "hssal", "full_supervision"]
    if dataset_name:
        argv[:0] = ["--dataset-name", dataset_name]
    assert le.main(argv) == 0

    want = dataset_name or "siri_whu"
    result = json.loads((out / "label_efficiency.json").read_text())
    assert result["dataset"] == want and result["n_eval"] == 12  # 30% of 40 images
    md = (out / "label_efficiency.md").read_text()
    assert md.startswith(f"# Label efficiency on {want} (")
    assert "test split (12 images)" in md
    assert "UCM" not in md and "420" not in md
    title = le.efficiency_figure(result).axes[0].get_title()  # the figure saved as the PNG
    assert want in title and "12 images" in title and "UCM" not in title
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
