"""Fault-injection hooks for the fault tests, all in one place; each is off unless its variable is set.

* ``HSSAL_FAULT_DELAY="train@1=60"``: the driver holds stage ``train`` of round 1 open 60 s before
  running it (:func:`delay_stage`), so a test can SIGKILL the driver *inside* a stage;
  ``"train@3=until:/tmp/go"`` holds it until the file ``/tmp/go`` exists (at most an hour), so a
  test can keep a run busy for exactly as long as something beside it takes.
* ``HSSAL_FAULT_KILL_WORKER="rank=1,step=30,marker=/tmp/f"``: that Ray Train worker SIGKILLs itself
  once (:func:`kill_worker`); the marker file makes it fire on the first attempt only, so the
  restarted worker group (``FailureConfig``) finishes from the last checkpoint.
* ``HSSAL_FAULT_KILL_SCORER="batch=2,marker=/tmp/f"``: the scoring actor exits (``os._exit``, no
  clean-up) when it is handed its ``batch``-th batch (:func:`kill_actor`), once (marker file).
* ``HSSAL_FAULT_KILL_ENCODER="batch=2,marker=/tmp/f"``: the same for the frozen path's encode actors;
  ``HSSAL_FAULT_KILL_SHARD="batch=2,marker=/tmp/f"``: the same for the store's shard actors
  (``resources.store_shards``), ``batch`` counting an actor's graph searches or scoring calls;
  ``times=N`` in any of these specs fires on the first ``N`` actors that reach that batch (the marker file
  counts them), so a test can exhaust the actors' restarts.

The driver reads the kill specs (:func:`worker_spec`, :func:`scorer_spec`) and hands them to the
workers and actors with their config, so they also fire on other nodes.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = [
    "delay_stage",
    "worker_spec",
    "scorer_spec",
    "encoder_spec",
    "shard_spec",
    "kill_worker",
    "kill_actor",
]

log = logging.getLogger(__name__)

DELAY_ENV = "HSSAL_FAULT_DELAY"
KILL_WORKER_ENV = "HSSAL_FAULT_KILL_WORKER"
KILL_SCORER_ENV = "HSSAL_FAULT_KILL_SCORER"
KILL_ENCODER_ENV = "HSSAL_FAULT_KILL_ENCODER"
KILL_SHARD_ENV = "HSSAL_FAULT_KILL_SHARD"


#: the longest ``until:`` hold of :func:`delay_stage`
HOLD_MAX_S = 3600.0


def delay_stage(stage: str, r: int, poll_s: float = 0.2) -> None:
    """Hold stage ``stage`` of round ``r`` as ``HSSAL_FAULT_DELAY`` says.

    The variable is a comma-separated list of ``stage@round=secs`` or ``stage@round=until:PATH``.
    """
    spec = os.environ.get(DELAY_ENV, "")
    for item in filter(None, spec.split(",")):
        where, _, how = item.partition("=")
        st, _, rr = where.partition("@")
        if st != stage or not rr or int(rr) != r:
            continue
        if how.startswith("until:"):
            path = how.removeprefix("until:")
            log.warning("HSSAL_FAULT_DELAY: holding stage %s of round %d until %s exists", stage, r, path)
            deadline = time.monotonic() + HOLD_MAX_S
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(poll_s)
        else:
            log.warning("HSSAL_FAULT_DELAY: holding stage %s of round %d for %s s", stage, r, how)
            time.sleep(float(how or 0))


def worker_spec() -> str | None:
    """The driver's ``HSSAL_FAULT_KILL_WORKER`` (forwarded to the training workers)."""
    return os.environ.get(KILL_WORKER_ENV)


def scorer_spec() -> str | None:
    """The driver's ``HSSAL_FAULT_KILL_SCORER`` (forwarded to the scoring actors)."""
    return os.environ.get(KILL_SCORER_ENV)


def encoder_spec() -> str | None:
    """The driver's ``HSSAL_FAULT_KILL_ENCODER`` (forwarded to the encode actors)."""
    return os.environ.get(KILL_ENCODER_ENV)


def shard_spec() -> str | None:
    """The driver's ``HSSAL_FAULT_KILL_SHARD`` (forwarded to the store's shard actors)."""
    return os.environ.get(KILL_SHARD_ENV)


def _parse(spec: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def _first_time(marker: str, note: str, times: int = 1) -> bool:
    """Add ``note`` to ``marker``; True while it held fewer than ``times`` notes (never without a marker).

    A marker that exists counts as at least one firing, whatever it holds.
    The count and the note are taken under an exclusive lock of the marker, so actors that reach the
    same batch at once fire ``times`` times in all, not once each (a check-then-append let two store
    shards both fire at ``times=1``).
    """
    if not marker:
        return False
    import fcntl

    try:
        fd, created = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        fd, created = os.open(marker, os.O_RDWR), False
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file closes
        lines = sum(1 for _ in f)
        # a marker this call did not create counts as one firing even when empty (another caller may
        # have created it an instant ago: counting it as fired only ever fires fewer times)
        fired = lines if created else max(1, lines)
        if fired >= times:
            return False
        f.seek(0, os.SEEK_END)
        f.write(note)
    return True


def kill_worker(rank: int, step: int, spec: str | None) -> None:
    """SIGKILL this training worker if ``spec`` names its ``rank`` and ``step`` (once, by marker)."""
    if not spec:
        return
    kv = _parse(spec)
    if int(kv.get("rank", -1)) != rank or int(kv.get("step", -1)) != step:
        return
    if not _first_time(kv.get("marker", ""), f"killed rank {rank} at step {step}\n"):
        return
    import signal

    log.warning("HSSAL_FAULT_KILL_WORKER: SIGKILL rank %d at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_actor(batch: int, spec: str | None, what: str = "scoring") -> None:
    """Exit this ``what`` actor if ``spec`` names its ``batch`` (``times`` actors by marker, default 1)."""
    if not spec:
        return
    kv = _parse(spec)
    if int(kv.get("batch", -1)) != batch:
        return
    note = f"killed {what} actor {os.getpid()} at batch {batch}\n"
    if not _first_time(kv.get("marker", ""), note, int(kv.get("times", 1))):
        return
    log.warning("HSSAL_FAULT_KILL: exiting %s actor at batch %d", what, batch)
    os._exit(1)
