"""A run directory's identity and config: :func:`science_sha` and :func:`load_run_config`."""

from __future__ import annotations

import hashlib
import json
import os

from hssal_ray import _io
from hssal_ray.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    science_fields,
)
from hssal_ray.config.loading import read_yaml_mapping
from hssal_ray.errors import StateError

__all__ = ["science_sha", "load_run_config"]


def science_sha(cfg: ExperimentConfig) -> str:
    """Hash of the fields that determine the run's results (those not marked runtime in the config)."""
    d = science_fields(cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run was started with (``RUN/config.yaml``), with optional overrides.

    The overrides apply to this invocation; :class:`~hssal_ray.loop.runner.LoopRunner` writes them
    to ``config.yaml`` only once the invocation has succeeded (see ``LoopRunner.run``).

    Raises:
        StateError: ``run_dir`` holds no ``config.yaml``.
        ConfigError: ``config.yaml`` is unreadable, not YAML, names a key twice or holds a bad
            value (or an override does).
    """
    p = _io.join(run_dir, "config.yaml")
    if not _io.exists(p):
        raise StateError(f"{run_dir} is not a run directory (no config.yaml)")
    values = read_yaml_mapping(
        p, "run config", "restore it from a backup, or start a new run with another loop.name"
    )
    cfg = config_from_dict(apply_overrides(values, overrides))
    if _io.is_uri(run_dir):
        parent, name = run_dir.rstrip("/").rsplit("/", 1)
    else:  # absolute, so that `--resume .` or `--resume runs/x/..` name the folder itself
        parent, name = os.path.split(os.path.abspath(run_dir))
    if cfg.run_path != run_dir:
        d = config_to_dict(cfg)
        d["loop"]["run_dir"], d["loop"]["name"] = parent or ".", name
        cfg = config_from_dict(d)
    return cfg
