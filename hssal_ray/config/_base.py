"""Shared pieces of the config sections: the :data:`RUNTIME` marker and the check helper.

See ``docs/ARCHITECTURE.md`` (run identity) for what RUNTIME means for a run directory.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hssal_ray.errors import ConfigError

RUNTIME: dict[str, Any] = {"runtime": True}
"""Field metadata of settings that change where or how fast a run goes, not its results.

Every other field is *science* (:func:`science_fields`): part of the run's identity when the run
reads it (:func:`hssal_ray.loop.run_config.science_sha`), and a run directory refuses a config
whose identity differs from the one it was started with.
"""


ADDED: dict[str, Any] = {"identity": "omit_default"}
"""Field metadata of science settings added after runs already existed: such a field is part of
the run's identity only when it differs from its default, so a run started before the field
existed (or one leaving it at its default) keeps its ``science_sha``."""


def _runtime(default: Any = None, **kwargs: Any) -> Any:
    return field(default=default, metadata=RUNTIME, **kwargs)


def _added(default: Any = None) -> Any:
    return field(default=default, metadata=ADDED)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")
