"""Start or join the Ray runtime once per process (one of the few modules that import Ray)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from hssal_ray.errors import HSSALError

__all__ = [
    "ensure_ray",
    "init_private_ray",
    "quiet_ray_console",
    "verbose",
    "RayAuthError",
    "LOOPBACK",
    "WELL_KNOWN_PORTS",
]

log = logging.getLogger(__name__)

WELL_KNOWN_PORTS = frozenset({6379, 8265, 10001, 52365})
"""Ray's default ports (GCS, dashboard, Ray Client, dashboard agent): a private runtime takes none."""

LOOPBACK = "127.0.0.1"
"""The only address a private runtime listens on."""

_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, or in a file named by "
    "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head node prints it)"
)


class RayAuthError(HSSALError):
    """A Ray cluster refused this driver's auth token, or no usable token is configured."""


def ensure_ray(resources: Any) -> None:
    """``ray.init`` unless already initialised.

    Joins ``resources.address`` (or ``$RAY_ADDRESS``, which ``ray job submit`` sets) when given,
    else starts a private local runtime with ``resources.num_cpus`` CPUs
    (:func:`init_private_ray`: loopback only, token auth).

    Joining uses token auth unless ``RAY_AUTH_MODE`` says otherwise (Ray's default for every
    cluster from 2.61); the token comes from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    or ``~/.ray/auth_token``, as Ray reads it.

    Raises:
        RayAuthError: The cluster refused the token, or token auth is on and no token is set.
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
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        _refresh_auth_config()
        try:
            with _signals_kept():
                ray.init(address=address, **kwargs)
        except Exception as e:
            err = _auth_error(e, address)
            if err is None:
                raise
            raise err from None
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
    """Start a new local Ray runtime for this process: loopback only, token auth, no well-known port.

    ``address="local"`` never joins a cluster that a ``ray start`` left running on this machine.
    Left to itself that runtime would also take the dashboard's 8265 and the dashboard agent's
    52365 whenever they are free, and then ``cluster/local.sh start`` (or a second loop's
    runtime) on the same machine cannot bind them. Here the operating system picks every port:
    ``dashboard_port=0``, and the agent's HTTP port 0 too (``ray.init`` has no argument for it, so
    the default of Ray's ``RayParams`` is replaced for this one call). GCS, raylet, object
    manager, runtime-env agent, metrics and worker ports are random in ``ray.init`` already.

    The dashboard (on 127.0.0.1 only) hosts the State API, which Ray Train's controller polls;
    without it every fit logs errors and is slower.

    Nobody but this process and the runtime's own processes talks to the runtime, so every one of
    its servers listens on 127.0.0.1 only (:func:`_single_machine`) and token auth is always on
    (:func:`_use_token_auth`), whatever ``RAY_AUTH_MODE`` says: another user of this machine who
    finds a port cannot run code either.

    Returns:
        What ``ray.init`` returns (its ``dashboard_url`` has the port the dashboard got).

    Raises:
        RayAuthError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty.
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    _use_token_auth()
    kwargs.setdefault("dashboard_host", LOOPBACK)
    kwargs.setdefault("dashboard_port", 0)
    kwargs.setdefault("_node_ip_address", LOOPBACK)
    with _default_agent_port(0), _single_machine(), _signals_kept():
        return ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=include_dashboard,
            **kwargs,
        )


def _refresh_auth_config() -> None:
    """Make Ray read ``RAY_AUTH_MODE`` again (it caches the mode the first time it is asked)."""
    try:
        from ray._raylet import Config
    except ImportError:  # pragma: no cover - another Ray layout
        return
    Config.initialize("")


def _use_token_auth() -> None:
    """Token auth for a private runtime, with a token only this process and its children know.

    Sets ``RAY_AUTH_MODE=token`` for this process and the runtime's processes (they inherit the
    environment). When no token is configured (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``), a random 256-bit one goes into this process's environment
    (``RAY_AUTH_TOKEN``): it is never written to disk nor logged. Left to itself, ``ray.init``
    would write ``~/.ray/auth_token`` with the default umask (readable by other users) and would
    fail on a read-only home directory.
    """
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        log.info("RAY_AUTH_MODE=%s is not used for the private Ray runtime: it always uses token auth", mode)
    os.environ["RAY_AUTH_MODE"] = "token"
    _refresh_auth_config()
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the environment may have changed since Ray last looked
    try:
        has_token = loader.has_token(ignore_auth_mode=True)
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH set, file unreadable or empty
        path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
        raise RayAuthError(
            f"RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty: point it at a file that holds a "
            "Ray auth token, or unset it"
        ) from None
    if not has_token:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        loader.reset_cache()


def _auth_error(exc: BaseException, address: str) -> RayAuthError | None:
    """The one-line error for a ``ray.init(address=...)`` that failed over auth, else ``None``.

    Ray raises ``AuthenticationError`` when token auth is on and no token is set, and a
    ``ConnectionError`` whose cause says ``InvalidAuthToken``/``Unauthenticated`` when the
    cluster refused the token (a wrong one, or none because auth is off here).
    """
    from ray.exceptions import AuthenticationError

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    for e in chain:
        text = str(e)
        if "RAY_AUTH_TOKEN_PATH is set but" in text:
            path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
            return RayAuthError(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty: point it at the file that holds "
                f"the token of the Ray cluster at {address}"
            )
        if "no authentication token was found" in text:
            return RayAuthError(
                f"token auth is on (RAY_AUTH_MODE={mode}) but no Ray auth token is set for the cluster at "
                f"{address}: {_TOKEN_HELP}"
            )
        if isinstance(e, AuthenticationError) or "InvalidAuthToken" in text or "Unauthenticated" in text:
            sent = "a token that is not the cluster's" if mode == "token" else "no token"
            return RayAuthError(
                f"the Ray cluster at {address} refused this driver (RAY_AUTH_MODE={mode}, {sent}): "
                f"{_TOKEN_HELP}"
            )
    return None


@contextlib.contextmanager
def _single_machine() -> Iterator[None]:
    """Make the node that ``ray.init`` starts now live on the loopback interface only.

    Ray 2.60 binds each server of a node (GCS, raylet, object manager, core workers, dashboard
    agent, runtime-env agent, metrics agent) to the node's IP address, or to every interface,
    unless that IP is a loopback one. But it turns a node IP of 127.0.0.1 into the host's
    address (``services.resolve_ip_for_localhost``), unless multi-machine clusters are off:
    ``ray_constants.ENABLE_RAY_CLUSTER``, from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, which is
    Ray's own single-machine mode on macOS and Windows. So the flag is off while ``ray.init``
    runs here, and in the environment of the processes it starts (workers are started later by
    the raylet, with the raylet's environment). Both are restored afterwards, so a ``ray start``
    that this process runs later is not affected.
    """
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # pragma: no cover - another Ray
        log.warning("this Ray has no single-machine switch: its servers may listen beyond 127.0.0.1")
        yield
        return
    flag, env = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(_SINGLE_MACHINE_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = env


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds; at exit ray.shutdown() stops the runtime in order


@contextlib.contextmanager
def _signals_kept() -> Iterator[None]:
    """Keep this process's SIGTERM handling as it was before ``ray.init``.

    ``ray.init`` replaces the driver's SIGTERM handler twice: with a Python one that kills the
    runtime's processes first (the driver's core worker then loses its raylet and aborts), and,
    at the C level, with the failure-signal handler of Ray's core worker, which prints a stack
    dump and aborts (exit 134). Putting the Python handler back also puts back Python's C-level
    handler, so SIGTERM runs Python code again. A handler set before (the run lease's, which
    unwinds through its release) comes back as it was; where SIGTERM had its default action,
    the handler raises ``SystemExit(143)``, whose unwinding ends in ``ray.shutdown()``.
    """
    main = threading.current_thread() is threading.main_thread() and sys.platform != "win32"
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main:
            if before is signal.SIG_DFL or before is None:
                before = _exit_on_signal
            signal.signal(signal.SIGTERM, before)


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
