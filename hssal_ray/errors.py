"""Typed errors raised by hssal_ray.

Every error a user can trigger by giving bad input derives from :class:`HSSALError`, so
command-line entry points can print one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "HSSALError",
    "ConfigError",
    "DataError",
    "EmptyPoolError",
    "BudgetError",
    "LabelFileError",
    "StateError",
    "LeaseError",
    "LeaseHeldError",
    "LeaseLostError",
    "DownloadError",
    "MissingOptionalDependencyError",
    "ActorPoolError",
]


class HSSALError(Exception):
    """Base class of every user-facing error."""


class ConfigError(HSSALError, ValueError):
    """A config key is unknown, has the wrong type or is out of range."""


class DataError(HSSALError):
    """A data root is missing or empty, a shard is unreadable, ids are duplicated, ..."""


class EmptyPoolError(HSSALError):
    """A query was asked of an empty (or fully labeled) pool."""


class BudgetError(HSSALError, ValueError):
    """A query budget is not positive or exceeds the pool."""


class LabelFileError(HSSALError):
    """A human label file was rejected; the run state is untouched."""


class StateError(HSSALError):
    """A run directory is inconsistent or belongs to another config."""


class LeaseError(HSSALError):
    """The run directory's lease (one driver per run) could not be taken or kept."""


class LeaseHeldError(LeaseError):
    """Another driver holds the run directory's lease; the message names it."""


class LeaseLostError(LeaseError):
    """Another driver took over the lease while this one ran; this one stops before writing more."""


class DownloadError(HSSALError):
    """A dataset download failed or did not match its checksum."""


class ActorPoolError(HSSALError):
    """A pool of Ray actors (encode, scoring, predict) lost actors more often than their restarts allow."""


class MissingOptionalDependencyError(HSSALError, ImportError):
    """An optional dependency (cuml, cupy, ...) is needed but not installed."""

    def __init__(self, package: str, extra: str = "gpu", purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"optional dependency '{package}' is needed{what} but is not installed; "
            f"install it with `pip install hssal_ray[{extra}]`"
        )
        self.package = package
