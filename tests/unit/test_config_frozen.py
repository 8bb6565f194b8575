"""The ``frozen.*`` config section: parsing, its checks, the old ``ssl.<key>`` names, the identity.

The frozen path's keys were ``ssl.*`` keys: a file or override that still uses those names loads
(moved, one warning), and a run's ``science_sha`` is what it was before the section existed (the
values pinned here were computed before the move).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from hssal_ray.config import (
    ExperimentConfig,
    FrozenConfig,
    SSLConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
)
from hssal_ray.config.frozen import MOVED_FROM_SSL
from hssal_ray.errors import ConfigError
from hssal_ray.loop.run_config import legacy_science_sha, science_sha, unused_keys
from hssal_ray.tune._plan import load_sweep_config
from hssal_ray.tune._space import trial_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FROZEN = ["ssl.finetune=frozen"]
LOGGER = "hssal_ray.config.loading"


def _moved_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "frozen section" in r.getMessage()]


def _old_layout(cfg: ExperimentConfig) -> dict:
    """``cfg`` as a config file written before the section existed: its keys under ``ssl``."""
    d = config_to_dict(cfg)
    d["ssl"].update(d.pop("frozen"))
    return d


# --------------------------------------------------------------------------- the section


def test_the_section_holds_the_frozen_keys_and_ssl_no_longer_does() -> None:
    names = {f.name for f in dataclasses.fields(FrozenConfig)}
    assert names == set(MOVED_FROM_SSL)
    assert not names & {f.name for f in dataclasses.fields(SSLConfig)}
    assert "finetune" in {f.name for f in dataclasses.fields(SSLConfig)}  # it chooses the learner
    d = yaml.safe_load(config_to_yaml(load_config(None)))
    assert set(d["frozen"]) == names and not names & set(d["ssl"])


def test_yaml_section_and_overrides_are_read(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("ssl: {finetune: frozen}\nfrozen: {embed_views: 3, graph_k: 7, pseudo_labels: graph}\n")
    cfg = load_config(str(p), ["frozen.tta_views=3", "frozen.graph_balance=uniform"])
    assert (cfg.frozen.embed_views, cfg.frozen.tta_views, cfg.frozen.graph_k) == (3, 3, 7)
    assert cfg.frozen.graph_balance == "uniform"
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["frozen.embed_views=17"], "frozen.embed_views"),
        (["frozen.embed_views=-1"], "frozen.embed_views"),
        ([*FROZEN, "frozen.tta_views=3"], "frozen.tta_views"),  # more than the 2 stored weak views
        ([*FROZEN, "frozen.tta_views=-1"], "frozen.tta_views"),
        (["frozen.graph_k=0"], "frozen.graph_k"),
        (["frozen.graph_alpha=1.0"], "frozen.graph_alpha"),
        (["frozen.graph_alpha=0"], "frozen.graph_alpha"),
        (["frozen.graph_cutoff=1.5"], "frozen.graph_cutoff"),
        (["frozen.graph_max_nodes=1"], "frozen.graph_max_nodes"),
        (["frozen.graph_balance=uniform"], "frozen.graph_balance"),  # needs pseudo_labels=graph
        (["frozen.feature_norm=l1"], "frozen.feature_norm"),
        (["frozen.pseudo_labels=teacher"], "frozen.pseudo_labels"),
        (["frozen.nope=1"], "frozen.nope"),
        # the rules with the ssl section, checked by ExperimentConfig
        (["frozen.tta_views=1"], "frozen.tta_views"),  # needs ssl.finetune=frozen
        (["frozen.pseudo_labels=graph"], "frozen.pseudo_labels"),  # needs ssl.finetune=frozen
        ([*FROZEN, "frozen.pseudo_labels=graph", "ssl.threshold_mode=flexmatch"], "frozen.pseudo_labels"),
        ([*FROZEN, "frozen.pseudo_labels=graph", "ssl.dist_align=true"], "frozen.pseudo_labels"),
        ([*FROZEN, "frozen.embed_views=0"], "frozen.embed_views"),  # the head trains on stored views
        # the committee's teacher and smoothed labels exist only with graph pseudo-labels
        (["query.uncertainty=committee"], "query.uncertainty"),
        ([*FROZEN, "query.uncertainty=committee"], "query.uncertainty"),
        ([*FROZEN, "query.late_uncertainty=committee"], "query.late_uncertainty"),
    ],
)
def test_each_bad_value_is_one_error_naming_its_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_values_the_image_path_ignores_still_load() -> None:
    cfg = load_config(None, ["frozen.embed_views=0", "frozen.feature_norm=none", "frozen.graph_k=3"])
    assert cfg.frozen.embed_views == 0 and cfg.ssl.finetune == "full"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["ssl.weights=package:efficientnet_lite0", "ssl.pretrained_hub=true"], "ssl.weights"),
        (["ssl.weights=/some/file.safetensors", "ssl.pretrained_hub=true"], "ssl.weights"),
    ],
)
def test_weights_and_hub_together_are_refused_when_the_config_is_read(
    overrides: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


# --------------------------------------------------------------------------- the old names


def test_old_names_in_a_yaml_file_move_with_one_warning(tmp_path: Path, caplog) -> None:
    p = tmp_path / "old.yaml"
    p.write_text("ssl: {finetune: frozen, embed_views: 3, graph_k: 7, lr: 0.1}\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg = load_config(str(p))
    assert (cfg.frozen.embed_views, cfg.frozen.graph_k, cfg.ssl.lr) == (3, 7, 0.1)
    (msg,) = _moved_warnings(caplog)
    assert "ssl.embed_views is now frozen.embed_views" in msg and "ssl.graph_k is now frozen.graph_k" in msg
    assert "ssl.lr" not in msg


def test_old_names_in_overrides_move_with_one_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg = load_config(None, [*FROZEN, "ssl.tta_views=1", "ssl.feature_norm=none"])
    assert (cfg.frozen.tta_views, cfg.frozen.feature_norm) == (1, "none")
    (msg,) = _moved_warnings(caplog)
    assert "frozen.tta_views" in msg and "frozen.feature_norm" in msg
    assert cfg == load_config(None, [*FROZEN, "frozen.tta_views=1", "frozen.feature_norm=none"])


def test_new_names_warn_about_nothing(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        load_config(str(CONFIGS / "ucm_cpu.yaml"), ["frozen.graph_k=5"])
        config_from_dict(config_to_dict(load_config(None)))
    assert _moved_warnings(caplog) == []


def test_both_names_with_different_values_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "both.yaml"
    p.write_text("ssl: {graph_k: 3}\nfrozen: {graph_k: 5}\n")
    with pytest.raises(ConfigError, match=r"ssl\.graph_k=3 and frozen\.graph_k=5 are both given"):
        load_config(str(p))
    with pytest.raises(ConfigError, match=r"frozen\.graph_k.*different values"):
        load_config(None, ["ssl.graph_k=3", "frozen.graph_k=5"])
    with pytest.raises(ConfigError, match=r"ssl\.graph_k=3 and frozen\.graph_k=5"):
        config_from_dict({"ssl": {"graph_k": 3}, "frozen": {"graph_k": 5}})
    # the same value under both names is one setting
    p.write_text("ssl: {graph_k: 5}\nfrozen: {graph_k: 5}\n")
    assert load_config(str(p)).frozen.graph_k == 5
    assert load_config(None, ["ssl.graph_k=5", "frozen.graph_k=5"]).frozen.graph_k == 5


def test_an_override_wins_over_the_file_whichever_names_they_use(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("ssl: {graph_k: 3}\n")
    new.write_text("frozen: {graph_k: 3}\n")
    for path in (old, new):
        for key in ("ssl.graph_k", "frozen.graph_k"):
            assert load_config(str(path), [f"{key}=5"]).frozen.graph_k == 5


def test_a_sweep_file_and_its_search_space_may_use_the_old_names(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text((CONFIGS / "ucm_cpu.yaml").read_text())
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base: base.yaml\nssl: {graph_k: 6}\ntune: {search_space: {ssl.graph_alpha: {grid: [0.5]}}}\n"
    )
    cfg = load_sweep_config(str(sweep))
    assert cfg.frozen.graph_k == 6 and cfg.frozen.pseudo_labels == "graph"
    trial = trial_config(cfg, {"ssl.graph_alpha": 0.5})
    assert trial.frozen.graph_alpha == 0.5 and trial.frozen.graph_k == 6


# --------------------------------------------------------------------------- the identity

# science_sha and legacy_science_sha computed before the frozen section existed
PINNED = [
    (None, [], "b02539d80ea76d72", "72d4582c0972a53f"),
    (  # the profile's query recipe as it was then
        "ucm_cpu.yaml",
        [
            "query.uncertainty=badge",
            "query.pick=typical",
            "query.typical_until=3.0",
            "query.alloc_over=pool",
            "query.boundary_check=false",
            "query.typical_scale=cluster",
            "query.late_candidate_ratio=0",
        ],
        "25939a226732554e",
        "3dd7640a15934953",
    ),
    ("ucm_dinov2.yaml", [], "83ce8165253f1cbd", "c8f6949457e7ea19"),
    ("smoke.yaml", [], "b007df64c64f2d20", "dbff5253d9e2ebf4"),
    (None, ["ssl.finetune=frozen"], "cefdbcb9a02892eb", "8bbdd80ca8c912f7"),
    (
        None,
        ["ssl.finetune=frozen", "frozen.pseudo_labels=graph", "ssl.head=mlp", "frozen.tta_views=1"],
        "5e3b1eb03861d1e9",
        "c61e3d720fff2ca0",
    ),
    (None, ["ssl.finetune=partial"], "560422392451f520", "d806a0befe174154"),
]


@pytest.mark.parametrize(("name", "overrides", "sha", "legacy"), PINNED)
def test_the_identity_is_what_it_was_before_the_section(
    name: str | None, overrides: list[str], sha: str, legacy: str
) -> None:
    cfg = load_config(None if name is None else str(CONFIGS / name), overrides)
    assert (science_sha(cfg), legacy_science_sha(cfg)) == (sha, legacy)
    again = config_from_dict(_old_layout(cfg))  # the same config written in the old layout
    assert again == cfg and science_sha(again) == sha


def test_every_frozen_key_is_left_out_of_an_image_run_identity() -> None:
    base = load_config(None)
    assert {f"frozen.{k}" for k in MOVED_FROM_SSL} <= unused_keys(base)
    for change in (
        "frozen.embed_views=5",
        "frozen.feature_norm=none",
        "frozen.graph_k=4",
        "frozen.graph_alpha=0.3",
        "frozen.graph_cutoff=0.5",
        "frozen.graph_max_nodes=99",
    ):
        assert science_sha(load_config(None, [change])) == science_sha(base), change


def test_a_used_frozen_key_changes_a_frozen_run_identity() -> None:
    graph = [*FROZEN, "frozen.pseudo_labels=graph"]
    for base, change in (
        (FROZEN, "frozen.embed_views=3"),
        (FROZEN, "frozen.tta_views=1"),
        (graph, "frozen.graph_k=4"),
        (graph, "frozen.graph_balance=uniform"),
    ):
        assert science_sha(load_config(None, [*base, change])) != science_sha(load_config(None, base)), change
