"""Linux process-tree helpers for the tests: descendants of a pid and the TCP sockets they listen on."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
from collections.abc import Iterator


def descendants(root: int) -> set[int]:
    """``root`` and every process below it (``/proc``)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = {root}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def listening_ports(pids: set[int]) -> dict[int, int]:
    """``port -> pid`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    return {port: pid for _addr, port, pid in listening_sockets(pids)}


def _address(hex_addr: str) -> str:
    """An address of ``/proc/net/tcp[6]`` (32-bit words in host byte order, little-endian here)."""
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    return str(ipaddress.ip_address(raw))


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ``::1``, or an IPv4 loopback address mapped into IPv6 (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def listening_sockets(pids: set[int]) -> set[tuple[str, int, int]]:
    """``(address, port, pid)`` of every TCP socket in LISTEN state that one of ``pids`` holds."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode_pid[target[8:-1]] = pid
    out: set[tuple[str, int, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inode_pid:  # 0A = LISTEN
                addr, port = cols[1].rsplit(":", 1)
                out.add((_address(addr), int(port, 16), inode_pid[cols[9]]))
    return out


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie or a dead process does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def terminal_sigint() -> Iterator[None]:
    """Processes started inside the block get SIGINT at its default, as a driver started from a terminal.

    A test session started as a background job (``cmd &`` in a script, ``setsid nohup ... &``)
    inherits SIGINT ignored, and an ignored signal stays ignored across ``exec``: a driver started
    from it never sees a Ctrl-C (Python does not even install its ``KeyboardInterrupt`` handler).
    A Python-level handler is reset to the default by ``exec``, so this block puts Python's own in
    place while the child is started and restores the session's disposition after.
    """
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if before is not None:  # None: a handler not set from Python, left as it is
            signal.signal(signal.SIGINT, before)
