"""Sweep configs and plans: the ``base:`` key, per-trial resources, directories (no Ray).

:mod:`hssal_ray.tune.search` runs what :func:`plan_sweep` lays out; see its docstring for why a
trial's footprint counts more than the bundles Tune reserves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from hssal_ray import _io
from hssal_ray.config import ExperimentConfig, apply_overrides, config_from_dict
from hssal_ray.config.loading import move_old_keys
from hssal_ray.errors import ConfigError
from hssal_ray.tune._space import ParamSpec, check_search_space, max_reports, sweep_fingerprint

__all__ = [
    "SweepPlan",
    "check_same_sweep",
    "load_sweep_config",
    "plan_sweep",
    "trial_bundles",
    "trial_footprint",
]


# --------------------------------------------------------------------------- config


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: str) -> dict[str, Any]:
    if not _io.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(_io.read_text(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return values


def load_sweep_config(path: str | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a sweep YAML: a loop config plus a ``tune`` section, optionally on top of a ``base`` file.

    ``base: ucm_cpu.yaml`` (a path relative to the sweep file, or absolute) loads that loop config
    first; the sweep file's own keys are merged over it (mappings merge, other values replace),
    then ``key=value`` overrides apply. A chain of bases is followed.

    Raises:
        ConfigError: Missing files, a cycle of bases, bad YAML, unknown keys or bad values.
    """
    values: dict[str, Any] = {}
    seen: list[str] = []
    while path is not None:
        if path in seen:
            raise ConfigError(f"config 'base' files form a cycle: {' -> '.join([*seen, path])}")
        seen.append(path)
        own = move_old_keys(_read_yaml(path))  # before merging: a file's old key names its own value
        base = own.pop("base", None)
        values = _merge(own, values)
        if base is None:
            break
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
        path = (
            base if (os.path.isabs(base) or _io.is_uri(base)) else os.path.join(os.path.dirname(path), base)
        )
    return config_from_dict(apply_overrides(values, overrides))


# --------------------------------------------------------------------------- plan


def trial_bundles(cfg: ExperimentConfig) -> list[dict[str, float]]:
    """Placement-group bundles Tune reserves per trial (head first; why: :mod:`hssal_ray.tune.search`)."""
    head: dict[str, float] = {"CPU": float(cfg.tune.cpus_per_trial)}
    if cfg.tune.gpus_per_trial > 0:
        head["GPU"] = float(cfg.tune.gpus_per_trial)
    return [head, {"CPU": 1.0}] if cfg.query.parallel else [head]


def trial_footprint(cfg: ExperimentConfig) -> dict[str, float]:
    """CPUs/GPUs one trial holds at most: Tune's bundles + decode + training or scoring (not both)."""
    from hssal_ray.learners import learner_class

    return learner_class(cfg).trial_footprint(cfg, trial_bundles(cfg))


@dataclass
class SweepPlan:
    """Everything fixed before Ray starts.

    Args:
        cfg: The sweep config (base loop config + ``tune`` section).
        specs: Parsed search space.
        sweep_dir: Parent of the trials' run directories and of the sweep's outputs.
        storage: Tune storage root; the experiment is ``storage/exp_name``.
        exp_name: Tune experiment name (= the sweep's ``loop.name``).
        max_t: Most reports any trial can make (ASHA's horizon).
        footprint: CPUs/GPUs one trial holds at most (Tune's group + Train's group).
        fingerprint: Identity of the sweep (rejects restoring a different sweep into the same place).
    """

    cfg: ExperimentConfig
    specs: list[ParamSpec]
    sweep_dir: str
    storage: str
    exp_name: str
    max_t: int
    footprint: dict[str, float]
    fingerprint: str
    keys: list[str] = field(default_factory=list)

    @property
    def exp_path(self) -> str:
        """Tune's experiment directory."""
        return _io.join(self.storage, self.exp_name)


def _abs(path: str) -> str:
    return path if _io.is_uri(path) else os.path.abspath(path)


def plan_sweep(cfg: ExperimentConfig) -> SweepPlan:
    """Validate the sweep (every key and value) and lay out its directories; no Ray needed.

    Raises:
        ConfigError: An empty or invalid search space, or a sweep that cannot run unattended.
    """
    specs = check_search_space(cfg)
    run_dir = _abs(cfg.loop.run_dir)
    return SweepPlan(
        cfg=cfg,
        specs=specs,
        sweep_dir=_io.join(run_dir, cfg.loop.name),
        storage=_abs(cfg.tune.storage) if cfg.tune.storage else _io.join(run_dir, "tune"),
        exp_name=cfg.loop.name,
        max_t=max_reports(cfg, specs),
        footprint=trial_footprint(cfg),
        fingerprint=sweep_fingerprint(cfg),
        keys=[s.key for s in specs],
    )


def check_same_sweep(plan: SweepPlan, resuming: bool) -> None:
    p = _io.join(plan.sweep_dir, "sweep.json")
    if _io.exists(p):
        old = _io.read_json(p)
        if old.get("fingerprint") != plan.fingerprint and resuming:
            raise ConfigError(
                f"{plan.exp_path} holds a different sweep (its config or search space changed); "
                "use another loop.name for the new sweep, or delete the old one"
            )
    _io.atomic_write_json(
        p,
        {
            "fingerprint": plan.fingerprint,
            "experiment_path": plan.exp_path,
            "search_space": plan.cfg.tune.search_space,
        },
    )
