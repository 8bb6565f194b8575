"""One driver per run directory: ``RUN/lease.json``, held by the running driver (plain Python, no Ray).

The driver that runs a loop (a CLI run, a ``--resume --labels`` import, a Ray Tune trial) holds
the lease for as long as it may write run state. The lease file names its owner (host, pid,
start time, command) and is kept fresh by a heartbeat thread that refreshes its modification
time every ``timeout / 6`` seconds (at most 10 s). A second driver:

* refuses at once (:class:`~hssal_ray.errors.LeaseHeldError`) with one line naming the owner;
* takes the lease over, with a warning, when its owner is provably gone (same host and pid
  namespace, and that pid is not running any more or is now another process) or when its
  heartbeat is older than the owner's timeout (judged by the file system's clock, so the hosts'
  clocks need not agree);
* takes it over regardless with ``force=True`` (``--force-unlock``).

A driver whose lease was taken over notices it at its next heartbeat or ownership check
(:meth:`RunLease.check`, called before every state write) and stops with
:class:`~hssal_ray.errors.LeaseLostError` instead of writing on.

What is guaranteed where:

* Local and shared POSIX file systems (NFS, Lustre, ...): the lease is created atomically (a
  fully written temp file hard-linked into place; ``O_CREAT | O_EXCL`` where hard links are not
  supported), and a takeover or release removes the old file only under a short lock
  (``lease.json.lock``, also created atomically) after checking it is still the file it judged.
  Two drivers can never both acquire the lease, free or stale.
* ``s3://``, ``gs://`` and other pyarrow URIs: best effort. pyarrow has no create-if-absent, so a
  driver writes its lease, waits a moment and reads it back; of two drivers that start within
  about a second of each other, one may not notice the other until the loser's next heartbeat
  (it then stops at the next stage boundary).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from hssal_ray import _io
from hssal_ray.errors import LeaseError, LeaseHeldError, LeaseLostError

# the owner and the stores live in their own modules; imported here for the lease and its tests
from hssal_ray.loop.lease_owner import LeaseOwner, _proc_stat  # noqa: F401
from hssal_ray.loop.lease_store import _LocalStore, _ObjectStore, _Store, _store_for  # noqa: F401

__all__ = ["LEASE_FILE", "LeaseOwner", "RunLease", "Terminated", "read_lease"]

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
"""Name of the lease file inside a run directory."""

_MAX_TAKEOVERS = 10  # lease changed hands this often while we tried: give up with an error


def read_lease(run_dir: str) -> LeaseOwner | None:
    """The owner named by ``RUN/lease.json`` (``None`` if there is none or it is unreadable)."""
    cur = _store_for(_io.join(run_dir, LEASE_FILE)).read()
    return LeaseOwner.parse(cur[0]) if cur else None


# --------------------------------------------------------------------------- the lease


class Terminated(SystemExit):
    """SIGTERM or SIGHUP reached a driver holding a lease; ``code`` is the exit status, 128 + signal."""


_signals_received: list[int] = []


def _raise_exit(signum: int, frame: Any) -> None:
    _signals_received.append(signum)
    raise Terminated(128 + signum)  # unwinds through the `finally` that releases the lease


class RunLease:
    """The lease of one run directory; a context manager (acquire on enter, release on exit).

    Args:
        run_dir: The run directory (local path or URI); created if missing.
        timeout_s: Heartbeat timeout: a lease not refreshed for this long may be taken over.
        force: Take the lease over even when its owner seems alive (``--force-unlock``).
        wait_s: Wait up to this long for a held lease to be released or go stale before
            refusing (0 = refuse at once).
        heartbeat_s: Refresh period (default ``timeout_s / 6``, at most 10 s).
        command: Command line recorded as the owner's (default: this process's).

    Raises:
        LeaseHeldError: From :meth:`acquire`, when another driver holds the lease.
        LeaseLostError: From :meth:`check`, when another driver has taken the lease over.
    """

    def __init__(
        self,
        run_dir: str,
        *,
        timeout_s: float = 60.0,
        force: bool = False,
        wait_s: float = 0.0,
        heartbeat_s: float | None = None,
        command: str | None = None,
        _store: _Store | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"lease timeout must be > 0, got {timeout_s}")
        self.run_dir = str(run_dir)
        self.path = _io.join(self.run_dir, LEASE_FILE)
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else min(10.0, self.timeout_s / 6)
        self.force, self.wait_s, self.command = force, float(wait_s), command
        self._store = _store if _store is not None else _store_for(self.path)
        self.owner: LeaseOwner | None = None
        self._data = b""
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signals: list[int] = []

    # ------------------------------------------------------------------ acquire
    def acquire(self) -> RunLease:
        """Take the lease (see the module doc for the rules); starts the heartbeat."""
        if self.owner is not None:
            raise LeaseError(f"lease {self.path} is already held by this RunLease")
        me = LeaseOwner.this_process(self.timeout_s, self.command)
        data = me.to_bytes()
        deadline = time.monotonic() + self.wait_s
        takeovers = races = 0
        looked_again = False
        while True:
            try:
                created = self._store.create(data)
            except OSError as e:  # e.g. a full disk: the store has removed what it had written
                raise LeaseError(
                    f"could not write the lease file {self.path}: {e.strerror or e}; "
                    "fix that (free space, permissions) and re-run"
                ) from e
            if created:
                break
            cur = self._store.read()
            if cur is None:  # released between our create and read
                races += 1
                if races > 100:
                    raise LeaseError(f"could not create the lease file {self.path}; retry")
                continue
            old, mtime = cur
            owner = LeaseOwner.parse(old)
            age = self._store.now() - mtime
            reason = self._stale_reason(owner, age)
            if owner is None and reason is None and age < 2.0 and not looked_again:
                looked_again = True  # maybe being written right now (no hard links here): look again
                time.sleep(0.3)
                continue
            if reason is None and self.force:
                reason = "--force-unlock"
            if reason is not None:
                takeovers += 1
                if takeovers > _MAX_TAKEOVERS:
                    raise LeaseError(f"could not take over the lease {self.path}: it keeps changing; retry")
                who = owner.describe() if owner is not None else "an unreadable lease file"
                log.warning("taking over the lease of %s from %s: %s", self.run_dir, who, reason)
                self._store.take(old, mtime)
                continue
            if time.monotonic() < deadline:
                time.sleep(min(self.heartbeat_s, max(0.05, deadline - time.monotonic())))
                continue
            raise LeaseHeldError(self._held_message(owner, age))
        self.owner, self._data, self._lost = me, data, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="hssal-lease-heartbeat", daemon=True)
        self._thread.start()
        log.debug("holding the lease %s (%s)", self.path, me.describe())
        return self

    def _stale_reason(self, owner: LeaseOwner | None, age: float) -> str | None:
        if owner is None:
            if age > self.timeout_s:
                return f"the lease file is unreadable and has not changed for {age:.0f} s"
            return None
        gone = owner.gone_reason()
        if gone is not None:
            return gone
        limit = owner.timeout_s if owner.timeout_s > 0 else self.timeout_s
        if age > limit:
            return f"its last heartbeat was {age:.0f} s ago (timeout {limit:g} s)"
        return None

    def _held_message(self, owner: LeaseOwner | None, age: float) -> str:
        if owner is None:
            return (
                f"run directory {self.run_dir} has an unreadable lease file {self.path} (written {age:.0f} s "
                "ago); if no other driver is running this run, re-run with --force-unlock"
            )
        return (
            f"run directory {self.run_dir} is in use by another driver: {owner.describe()}; last heartbeat "
            f"{max(age, 0):.0f} s ago. Wait for it to finish or stop it; if it is gone (e.g. its machine is "
            f"down), re-run with --force-unlock"
        )

    # ------------------------------------------------------------------ hold
    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            log.error(
                "lost the lease of %s: %s; this driver stops before its next state write",
                self.run_dir,
                reason,
            )

    def _lost_reason(self, cur: tuple[bytes, float] | None) -> str:
        if cur is None:
            return "the lease file was removed by someone else"
        owner = LeaseOwner.parse(cur[0])
        return f"it was taken over by {owner.describe()}" if owner else "the lease file was overwritten"

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                cur = self._store.read()
                if cur is None or cur[0] != self._data:
                    self._mark_lost(self._lost_reason(cur))
                    return
                self._store.refresh(self._data)
                last_ok = time.monotonic()
            except Exception as e:  # a network file system or object store hiccup: retry
                if time.monotonic() - last_ok > self.timeout_s:
                    self._mark_lost(f"it could not be refreshed for {self.timeout_s:g} s ({e})")
                    return
                log.warning("lease heartbeat of %s failed (retrying): %s", self.run_dir, e)

    @property
    def held(self) -> bool:
        """Whether this driver holds the lease (as far as it knows)."""
        return self.owner is not None and self._lost is None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this driver still holds the lease (reads the file)."""
        if self.owner is None:
            raise LeaseLostError(f"the lease of {self.run_dir} is not held")
        if self._lost is None:
            try:
                cur = self._store.read()
            except OSError as e:  # cannot tell now; the heartbeat gives up after the timeout
                log.warning("could not read the lease of %s: %s", self.run_dir, e)
                return
            if cur is None or cur[0] != self._data:
                self._mark_lost(self._lost_reason(cur))
        if self._lost is not None:
            raise LeaseLostError(
                f"this driver lost the lease of run directory {self.run_dir}: {self._lost}. "
                "It stopped before writing more state; the run belongs to the other driver now"
            )

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """Stop the heartbeat and remove the lease file (if it is still ours). Never raises."""
        if self.owner is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 10)
        try:
            if self._lost is None and not self._store.take(self._data, None):
                log.warning("the lease of %s was no longer this driver's; left it in place", self.run_dir)
        except Exception as e:
            log.warning("could not remove the lease file %s: %s", self.path, e)
        self.owner, self._thread = None, None
        self._restore_signals()

    def _install_signals(self) -> None:
        """SIGTERM/SIGHUP with their default action would kill the driver without releasing."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _raise_exit)
                self._signals.append(sig)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self._signals:
            if signal.getsignal(sig) is _raise_exit:  # not replaced since (ray.init sets its own)
                signal.signal(sig, signal.SIG_DFL)
        self._signals = []

    def __enter__(self) -> RunLease:
        self.acquire()
        _signals_received.clear()
        self._install_signals()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.release()
        if _signals_received and isinstance(exc, SystemExit | KeyboardInterrupt):
            if not isinstance(exc, Terminated):
                # the signal's exception came through code that replaced it: Ray turns a SystemExit
                # raised while it waits (ray.get) into SystemExit(1)
                raise Terminated(128 + _signals_received[0]) from None
