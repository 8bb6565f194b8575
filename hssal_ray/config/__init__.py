"""Typed, validated configuration: one frozen dataclass per stage.

Defaults live only here. YAML files in ``configs/`` hold overrides, and ``key.sub=value``
arguments on the command line override those. An unknown key, a wrong type or an
out-of-range value raises one :class:`~hssal_ray.errors.ConfigError` naming the key and the
allowed values.

Example:
    >>> cfg = load_config(None, ["query.budget=10", "ssl.enabled=false"])
    >>> cfg.query.budget, cfg.ssl.enabled
    (10, False)
"""

from hssal_ray.config._base import RUNTIME
from hssal_ray.config.experiment import ExperimentConfig, ResourcesConfig, TuneConfig
from hssal_ray.config.frozen import FrozenConfig
from hssal_ray.config.loading import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    science_fields,
)
from hssal_ray.config.loop import LoopConfig, OracleConfig, QueryConfig
from hssal_ray.config.training import DataConfig, SSLConfig

__all__ = [
    "DataConfig",
    "SSLConfig",
    "FrozenConfig",
    "QueryConfig",
    "OracleConfig",
    "LoopConfig",
    "ResourcesConfig",
    "TuneConfig",
    "ExperimentConfig",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_to_yaml",
    "config_from_dict",
    "science_fields",
    "RUNTIME",
]
