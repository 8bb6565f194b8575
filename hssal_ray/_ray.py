"""Start or join the Ray runtime once per process (one of the few modules that import Ray)."""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["ensure_ray"]

log = logging.getLogger(__name__)


def ensure_ray(resources: Any) -> None:
    """``ray.init`` unless already initialised.

    Joins ``resources.address`` (or ``$RAY_ADDRESS``, which ``ray job submit`` sets) when given,
    else starts a local runtime with ``resources.num_cpus`` CPUs. Local runtimes disable token
    auth only if the user has not chosen a mode (``RAY_AUTH_MODE``).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs: dict[str, Any] = {
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        log.info("joined Ray cluster at %s", address)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",  # never join a cluster some `ray start` left running on this machine
        num_cpus=resources.num_cpus,
        object_store_memory=resources.object_store_memory,
        # The dashboard hosts the State API, which Ray Train's controller polls; without it
        # every fit logs errors and is slower. It listens on 127.0.0.1 only.
        dashboard_host="127.0.0.1",
        **kwargs,
    )
