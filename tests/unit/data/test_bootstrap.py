"""The run's catalog bootstrap: built once (with the demo data when there is no root), then loaded."""

from __future__ import annotations

import json
import os

import pytest

from hssal_ray.config import load_config
from hssal_ray.data import bootstrap
from hssal_ray.data.synthetic import make_synthetic_rs

SMALL = ["data.synthetic_classes=3", "data.synthetic_per_class=4", "data.synthetic_size=16"]


def test_demo_data_and_manifest_are_built_once(tmp_path, monkeypatch) -> None:
    cfg = load_config(None, SMALL)
    run = str(tmp_path / "run")
    lines: list[str] = []
    cat = bootstrap.ensure(cfg, run, lines.append)
    assert os.path.exists(os.path.join(run, "synthetic_data", ".complete"))
    assert os.path.exists(os.path.join(run, bootstrap.MANIFEST_FILE))
    assert json.load(open(os.path.join(run, "classes.json"))) == list(cat.class_names)
    assert len(cat.class_names) == 3 and cat.table.num_rows == 12
    assert any("synthetic demo dataset" in s for s in lines) and any("catalog:" in s for s in lines)

    def no_rescan(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a run's manifest is scanned once")

    monkeypatch.setattr(bootstrap, "scan", no_rescan)
    lines.clear()
    again = bootstrap.ensure(cfg, run, lines.append)
    assert again.table.equals(cat.table) and lines == []


def test_a_given_root_is_scanned_with_the_config_split(tmp_path) -> None:
    root = str(tmp_path / "data")
    make_synthetic_rs(root, num_classes=2, per_class=10, size=16, seed=0)
    cfg = load_config(None, [f"data.root={root}", "data.test_fraction=0.3", "data.val_fraction=0.2"])
    cat = bootstrap.ensure(cfg, str(tmp_path / "run"), lambda s: None)
    splits = cat.table.column("split").to_pylist()
    assert splits.count("test") == 6 and splits.count("val") > 0
    assert not os.path.exists(tmp_path / "run" / "synthetic_data")


def test_bad_root_raises(tmp_path) -> None:
    from hssal_ray.errors import DataError

    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DataError):
        bootstrap.ensure(cfg, str(tmp_path / "run"), lambda s: None)
