"""Who holds a run directory's lease: :class:`LeaseOwner` (host, pid, start time, command).

Whether an owner is provably gone (:meth:`LeaseOwner.gone_reason`) is judged from ``/proc`` on the
same host and pid namespace only; see :mod:`hssal_ray.loop.lease` for the protocol.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- who owns it


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time in clock ticks since boot)`` of a Linux process, ``None`` if unknown."""
    text = _read_first_line(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _command() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        argv = [sys.executable, *sys.argv]
    cmd = shlex.join(argv) if argv else "?"
    return cmd if len(cmd) <= 400 else cmd[:397] + "..."


@dataclass(frozen=True)
class LeaseOwner:
    """What a lease file says about the driver holding it.

    Attributes:
        owner_id: Random id of this lease (each acquisition gets a new one).
        host: Host name of the owner.
        pid: Process id of the owner.
        started: Unix time the lease was taken.
        command: The owner's command line.
        timeout_s: The owner's heartbeat timeout: it refreshes the lease well within this.
        boot_id: Linux boot id of the owner's machine (tells a different machine of the same name).
        pid_ns: The owner's pid namespace (tells another container of the same host name).
        pid_start: Start time of the owner's process (tells a reused pid).
    """

    owner_id: str
    host: str
    pid: int
    started: float
    command: str
    timeout_s: float
    boot_id: str = ""
    pid_ns: str = ""
    pid_start: str = ""

    @classmethod
    def this_process(cls, timeout_s: float, command: str | None = None) -> LeaseOwner:
        """An owner record for the current process."""
        st = _proc_stat(os.getpid())
        return cls(
            owner_id=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.time(),
            command=command if command is not None else _command(),
            timeout_s=float(timeout_s),
            boot_id=_read_first_line("/proc/sys/kernel/random/boot_id"),
            pid_ns=_pid_ns(),
            pid_start=st[1] if st else "",
        )

    def to_bytes(self) -> bytes:
        """The lease file's content."""
        d = {"version": 1, **self.__dict__}
        d["started_at"] = dt.datetime.fromtimestamp(self.started).astimezone().isoformat(timespec="seconds")
        return (json.dumps(d, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseOwner | None:
        """The owner a lease file names, or ``None`` when the file is not a valid lease."""
        try:
            d = json.loads(data.decode("utf-8"))
            return cls(
                owner_id=str(d["owner_id"]),
                host=str(d["host"]),
                pid=int(d["pid"]),
                started=float(d["started"]),
                command=str(d.get("command", "?")),
                timeout_s=float(d["timeout_s"]),
                boot_id=str(d.get("boot_id", "")),
                pid_ns=str(d.get("pid_ns", "")),
                pid_start=str(d.get("pid_start", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        """``host H, pid P, since TIME (command: ...)``."""
        since = dt.datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
        cmd = self.command if len(self.command) <= 160 else self.command[:157] + "..."
        return f"host {self.host}, pid {self.pid}, since {since} (command: {cmd})"

    def gone_reason(self) -> str | None:
        """Why this owner is provably no longer running, or ``None`` when it may be alive.

        Only an owner on this machine (same host name and boot id) in this pid namespace can be
        checked; any other owner is judged by its heartbeat alone.
        """
        me = LeaseOwner.this_process(self.timeout_s, command="")
        if self.host != me.host or (self.boot_id and me.boot_id and self.boot_id != me.boot_id):
            return None
        if self.pid_ns != me.pid_ns:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return f"its process {self.pid} on this host is not running"
        except PermissionError:
            pass  # alive, another user's
        st = _proc_stat(self.pid)
        if st is not None and st[0] in ("Z", "X"):
            return f"its process {self.pid} on this host has exited"
        if st is not None and self.pid_start and st[1] != self.pid_start:
            return f"its process {self.pid} on this host has exited (the pid now belongs to another process)"
