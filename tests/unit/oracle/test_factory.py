"""``oracle.from_config``: the run's oracle from ``oracle.kind`` and the catalog."""

from __future__ import annotations

import types

import pyarrow as pa
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.oracle import HumanOracle, LabelStudioOracle, Oracle, SimulatedOracle, from_config


def _catalog() -> types.SimpleNamespace:
    table = pa.table({"sample_id": ["a/1.png", "b/2.png", "x.png"], "label": [0, 1, -1]})
    return types.SimpleNamespace(class_names=("a", "b"), table=table)


def test_simulated_answers_from_the_manifest_labels(tmp_path) -> None:
    oracle = from_config(load_config(None), _catalog())
    assert isinstance(oracle, SimulatedOracle) and isinstance(oracle, Oracle)
    assert not oracle.may_pause and not oracle.pulls_labels and not oracle.accepts_label_files
    answer = oracle.collect(str(tmp_path), ["b/2.png", "a/1.png"])
    assert answer is not None and answer.labels == {"b/2.png": 1, "a/1.png": 0}


def test_human_hides_folder_ids(tmp_path) -> None:
    oracle = from_config(load_config(None, ["oracle.kind=human"]), _catalog())
    assert type(oracle) is HumanOracle and oracle.accepts_label_files and oracle.may_pause
    assert oracle.hide_sample_id  # oracle.hide_sample_id=auto and the ids have folder parts


def test_label_studio_needs_its_token(monkeypatch) -> None:
    cfg = load_config(None, ["oracle.kind=label_studio", "oracle.token_env=HSSAL_TEST_TOKEN"])
    monkeypatch.delenv("HSSAL_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="HSSAL_TEST_TOKEN"):
        from_config(cfg, _catalog())
    monkeypatch.setenv("HSSAL_TEST_TOKEN", "secret")
    oracle = from_config(cfg, _catalog())
    assert isinstance(oracle, LabelStudioOracle) and oracle.pulls_labels
