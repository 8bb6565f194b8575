"""Config loading, dotted overrides, run identity and validation errors (no Ray)."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import yaml

from hssal_ray.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    science_fields,
)
from hssal_ray.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_and_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["query.budget=10", "ssl.enabled=false", "ssl.p_cutoff=0.5", "loop.name=x"])
    assert cfg.query.budget == 10
    assert cfg.ssl.enabled is False
    assert cfg.ssl.p_cutoff == 0.5
    assert cfg.loop.name == "x"
    assert cfg == load_config(
        None, ["loop.name=x", "query.budget=10", "ssl.enabled=false", "ssl.p_cutoff=0.5"]
    )
    assert load_config(None) == ExperimentConfig()


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("query: {budget: 7}\nseed: 3\n")
    cfg = load_config(str(path), ["seed=4"])
    assert (cfg.query.budget, cfg.seed) == (7, 4)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(str(empty)) == ExperimentConfig()


def test_ints_become_floats_but_not_the_other_way():
    assert isinstance(load_config(None, ["ssl.p_cutoff=1"]).ssl.p_cutoff, float)
    with pytest.raises(ConfigError, match=r"query\.budget: a float is a fraction .* must be in \(0, 1\]"):
        load_config(None, ["query.budget=1.5"])
    with pytest.raises(ConfigError, match=r"loop\.rounds: got 1\.5; expected an integer"):
        load_config(None, ["loop.rounds=1.5"])
    with pytest.raises(ConfigError, match=r"ssl\.enabled: got 'yes please'; expected true or false"):
        load_config(None, ["ssl.enabled=yes please"])
    with pytest.raises(ConfigError, match=r"query\.budget: got True; expected int or float"):
        load_config(None, ["query.budget=true"])
    with pytest.raises(ConfigError, match=r"loop\.name: got 3; expected a string"):
        load_config(None, ["loop.name=3"])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'query\.budgte' \(did you mean 'budget'\?\)"):
        load_config(None, ["query.budgte=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        config_from_dict({"nope": 1})


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"data\.layout: got 'zip'; allowed values: auto, imagefolder"):
        load_config(None, ["data.layout=zip"])


def test_range_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.image_size: must be in \[8, 4096\], got 4"):
        load_config(None, ["data.image_size=4"])
    with pytest.raises(ConfigError, match=r"resources\.num_workers: must be >= 1, got 0"):
        load_config(None, ["resources.num_workers=0"])
    with pytest.raises(ConfigError, match=r"loop\.stop_kappa: must be in \[0, 1\] \(0 = never stop early"):
        load_config(None, ["loop.stop_kappa=1.5"])
    with pytest.raises(ConfigError, match=r"loop\.stop_window: must be >= 1, got 0"):
        load_config(None, ["loop.stop_window=0"])


def test_bad_override_strings():
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["query.budget"])
    with pytest.raises(ConfigError, match="has an empty key"):
        apply_overrides({}, ["=3"])
    with pytest.raises(ConfigError, match="'seed' is a setting, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
    with pytest.raises(ConfigError, match="expected a mapping of QueryConfig fields"):
        config_from_dict({"query": 3})
    with pytest.raises(ConfigError, match="a config must be a mapping at the top level, got list"):
        config_from_dict([])  # type: ignore[arg-type]


def test_apply_overrides_does_not_touch_its_input():
    values = {"query": {"budget": 1}}
    out = apply_overrides(values, ["query.budget=2", "ssl.uratio=3"])
    assert values == {"query": {"budget": 1}}
    assert out == {"query": {"budget": 2}, "ssl": {"uratio": 3}}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config(str(listed))


def test_yaml_and_dict_round_trip():
    cfg = load_config(None, ["query.budget=9", "data.mean=[0.1, 0.2, 0.3]"])
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_science_fields_leave_out_runtime_settings():
    base = load_config(None)
    science = science_fields(base)
    assert "tune" not in science
    assert "num_workers" in science["resources"]
    assert "decode_batch_size" not in science["data"]
    assert science_fields(load_config(None, ["data.decode_batch_size=7"])) == science
    assert science_fields(load_config(None, ["query.budget=7"])) != science


def test_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


_RUN_CONFIGS = [p for p in sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))) if "sweep_" not in p]


@pytest.mark.parametrize("path", _RUN_CONFIGS, ids=os.path.basename)
def test_shipped_run_configs_load(path):
    assert isinstance(load_config(path), ExperimentConfig)
