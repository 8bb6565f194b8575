"""A run directory's identity and config: :func:`science_sha` and :func:`load_run_config`."""

from __future__ import annotations

import hashlib
import json
import os

import yaml

from hssal_ray import _io
from hssal_ray.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    science_fields,
)
from hssal_ray.errors import StateError

__all__ = ["science_sha", "load_run_config"]


def science_sha(cfg: ExperimentConfig) -> str:
    """Hash of the fields that determine the run's results (those not marked runtime in the config)."""
    d = science_fields(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run was started with (``RUN/config.yaml``), with optional overrides."""
    p = _io.join(run_dir, "config.yaml")
    if not _io.exists(p):
        raise StateError(f"{run_dir} is not a run directory (no config.yaml)")
    values = yaml.safe_load(_io.read_text(p)) or {}
    cfg = config_from_dict(apply_overrides(values, overrides))
    parent, name = (
        os.path.split(os.path.normpath(run_dir))
        if not _io.is_uri(run_dir)
        else run_dir.rstrip("/").rsplit("/", 1)
    )
    if cfg.run_path != run_dir:
        d = config_to_dict(cfg)
        d["loop"]["run_dir"], d["loop"]["name"] = parent or ".", name
        cfg = config_from_dict(d)
    return cfg
