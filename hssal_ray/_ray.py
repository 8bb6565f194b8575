"""Start or join the Ray runtime once per process (one of the few modules that import Ray)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["ensure_ray", "init_private_ray", "quiet_ray_console", "verbose", "WELL_KNOWN_PORTS"]

log = logging.getLogger(__name__)

WELL_KNOWN_PORTS = frozenset({6379, 8265, 10001, 52365})
"""Ray's default ports (GCS, dashboard, Ray Client, dashboard agent): a private runtime takes none."""


def ensure_ray(resources: Any) -> None:
    """``ray.init`` unless already initialised.

    Joins ``resources.address`` (or ``$RAY_ADDRESS``, which ``ray job submit`` sets) when given,
    else starts a private local runtime with ``resources.num_cpus`` CPUs
    (:func:`init_private_ray`). Local runtimes disable token auth only if the user has not chosen
    a mode (``RAY_AUTH_MODE``).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet_ray_console()
    kwargs: dict[str, Any] = {
        # workers' stdout/stderr stay in the session's log files unless --verbose
        "log_to_driver": verbose(),
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        log.info("joined Ray cluster at %s", address)
        return
    init_private_ray(num_cpus=resources.num_cpus, object_store_memory=resources.object_store_memory, **kwargs)


def verbose() -> bool:
    """``--verbose`` (``HSSAL_VERBOSE=1``): show Ray's own output (progress bars, worker logs)."""
    return os.environ.get("HSSAL_VERBOSE", "") not in ("", "0")


class _DropProgressNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars" not in record.getMessage()


def quiet_ray_console() -> None:
    """Keep Ray Data's progress logging and Ray Train's controller lines out of the console.

    They still go to the Ray session's log files (``ray-data.log``, the worker and controller
    logs under ``/tmp/ray/session_latest/logs``); ``--verbose`` shows them. Warnings stay visible.
    """
    if verbose():
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own tqdm bars (TTY) and stage lines instead
    for name in ("ray.data", "ray.train", "ray.tune"):
        lg = logging.getLogger(name)
        for h in lg.handlers:
            if not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.WARNING))
                h.addFilter(_DropProgressNotice())
        if name != "ray.data":
            lg.setLevel(logging.WARNING)


def init_private_ray(
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    *,
    include_dashboard: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Start a new local Ray runtime for this process that takes no well-known port.

    ``address="local"`` never joins a cluster that a ``ray start`` left running on this machine.
    Left to itself that runtime would also take the dashboard's 8265 and the dashboard agent's
    52365 whenever they are free, and then ``cluster/local.sh start`` (or a second loop's
    runtime) on the same machine cannot bind them. Here the operating system picks every port:
    ``dashboard_port=0``, and the agent's HTTP port 0 too (``ray.init`` has no argument for it, so
    the default of Ray's ``RayParams`` is replaced for this one call). GCS, raylet, object
    manager, runtime-env agent, metrics and worker ports are random in ``ray.init`` already.

    The dashboard (on 127.0.0.1 only) hosts the State API, which Ray Train's controller polls;
    without it every fit logs errors and is slower. Token auth is disabled only if the user has
    not chosen a mode (``RAY_AUTH_MODE``).

    Returns:
        What ``ray.init`` returns (its ``dashboard_url`` has the port the dashboard got).
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    kwargs.setdefault("dashboard_port", 0)
    with _default_agent_port(0):
        return ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=include_dashboard,
            **kwargs,
        )


@contextlib.contextmanager
def _default_agent_port(port: int) -> Iterator[None]:
    """Make ``ray.init`` start its dashboard agent's HTTP server on ``port`` (0 = any free port)."""
    from ray._private import parameter

    base = parameter.RayParams
    if "dashboard_agent_listen_port" not in inspect.signature(base.__init__).parameters:
        log.debug("this Ray has no dashboard_agent_listen_port; its agent keeps Ray's default port")
        yield
        return

    class _RayParams(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw.setdefault("dashboard_agent_listen_port", port)
            super().__init__(*args, **kw)

    parameter.RayParams = _RayParams
    try:
        yield
    finally:
        parameter.RayParams = base
