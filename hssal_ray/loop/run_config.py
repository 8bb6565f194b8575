"""A run directory's identity and config: :func:`science_sha` and :func:`load_run_config`.

A run's identity is the hash of its science settings (the config fields not marked runtime,
:func:`hssal_ray.config.science_fields`) less the keys this run never reads
(:func:`unused_keys`): a query key its strategy does not take, a frozen-path key on the image
path, and so on. Changing such a key leaves the run the same run.

The hash is taken over the layout runs were first identified with: the ``frozen.*`` keys hash as
the ``ssl.*`` keys they once were (:func:`_identity_layout`), so run directories started before
the ``frozen`` section existed keep their identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

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

__all__ = ["science_sha", "legacy_science_sha", "unused_keys", "load_run_config"]

_QUERY_ALWAYS = ("strategy", "budget", "uncertainty")
"""Query keys every run reads: the strategy, its budget, and ``uncertainty``, the score recorded
for every queried sample (``query_mean_u``) whatever the strategy ranks by."""

_FLAT_IGNORES = frozenset(
    {
        "coarse_k",
        "coarse_fit_sample",
        "alloc_temper",
        "alloc_over",
        "boundary_check",
        "typical_scale",
        "cover_scale",
        "coarse_fit",
        "alloc_flips",
        "alloc_purity",
        "coarse_by",
        "coarse_min_classes",
        "alloc_round_robin",
    }
)
"""Constructor parameters of ``hal_flat`` that its ``select`` never reads (it has no coarse level)."""

_GRAPH = ("graph_k", "graph_alpha", "graph_cutoff", "graph_max_nodes", "graph_balance")
"""``frozen`` keys read only with ``frozen.pseudo_labels=graph`` (which needs ``ssl.finetune=frozen``)."""


def _strategy_keys(name: str, q: Any) -> set[str]:
    """The ``query.*`` keys the strategy registered as ``name`` reads under the query config ``q``."""
    from hssal_ray.query.base import get_strategy_class

    keys = set(get_strategy_class(name)._param_defaults()) - {"random_state", "map_fn"}
    if name == "hal_flat":
        keys -= _FLAT_IGNORES
    auto = q.pick in ("auto", "auto_local")
    if not auto:
        keys -= {"typical_until", "late_uncertainty", "late_pick", "early_pick", "late_candidate_ratio"}
    if not (q.pick == "cover" or (auto and q.early_pick == "cover")):
        keys -= {"cover_by"}
    return keys


def unused_keys(cfg: ExperimentConfig) -> set[str]:
    """Dotted science keys that ``cfg``'s run never reads, so not part of its identity.

    * ``query.*``: all but :data:`_QUERY_ALWAYS` and the strategy's constructor parameters
      (also TypiClust's for ``loop.cold_start=typiclust``); ``typical_until`` only with
      ``pick=auto`` or ``auto_local``; ``cover_by`` only when a pick covers (``pick=cover``, or
      ``early_pick=cover`` with ``auto``); ``hal_flat`` ignores :data:`_FLAT_IGNORES`.
    * ``frozen.*``: all unless ``ssl.finetune=frozen``; :data:`_GRAPH` unless
      ``frozen.pseudo_labels=graph``.
    * ``ssl.*``: ``trainable_stages`` unless ``finetune=partial``; ``head_hidden`` unless
      ``head=mlp``.
    * ``resources.num_workers`` with ``ssl.finetune=frozen`` (the head trains in the driver).
    """
    q, s, f = cfg.query, cfg.ssl, cfg.frozen
    used = set(_QUERY_ALWAYS) | _strategy_keys(q.strategy, q)
    if cfg.loop.cold_start == "typiclust":
        used |= _strategy_keys("typiclust", q)
    out = {
        f"query.{f.name}"
        for f in dataclasses.fields(q)
        if f.name not in used and not f.metadata.get("runtime")
    }
    if s.finetune == "frozen":
        out.add("resources.num_workers")
    else:
        out |= {f"frozen.{x.name}" for x in dataclasses.fields(f)}
    if f.pseudo_labels != "graph":
        out |= {f"frozen.{k}" for k in _GRAPH}
    if s.finetune != "partial":
        out.add("ssl.trainable_stages")
    if s.head != "mlp":
        out.add("ssl.head_hidden")
    return out


def _hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _identity_layout(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (science fields) with the ``frozen`` section's keys back under ``ssl``, where they
    were when run identities were first computed: the hash of a config is the same whichever
    layout its file used."""
    frozen = d.pop("frozen", {})
    d["ssl"] = {**d.get("ssl", {}), **frozen}
    return d


def science_sha(cfg: ExperimentConfig) -> str:
    """The run's identity: hash of its science fields less :func:`unused_keys`.

    A run directory refuses a config whose ``science_sha`` differs from the one it was started with.
    """
    d = science_fields(cfg)
    for key in unused_keys(cfg):
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return _hash(_identity_layout(d))


def legacy_science_sha(cfg: ExperimentConfig) -> str:
    """The identity of run directories created before :func:`unused_keys` existed: the hash of
    every science field. ``LoopRunner`` accepts it on resume and rewrites it to :func:`science_sha`."""
    return _hash(_identity_layout(science_fields(cfg)))


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
