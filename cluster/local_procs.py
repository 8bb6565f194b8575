"""Processes of the one local cluster that ``cluster/local.sh start`` started (stdlib only).

``local.sh`` runs every ``ray start`` through ``session``: in a new session (``setsid``) whose id
is appended to a sessions file in the cluster's own Ray temp dir. The cluster's processes are
then the processes of those sessions (Ray's daemons inherit the session; the raylet's workers
get their own process group but keep the session), plus their descendants (``ray job submit``
drivers run in sessions of their own under the job's supervisor actor). A recorded session counts
only while one of its processes names the temp dir on its command line (the GCS, raylet and
dashboard all do), so a session id that the system has since reused for something else is never
touched, nor is a process outside those sessions that merely names the temp dir (``tail -f`` of
a log).

``stop`` sends SIGTERM to those processes, waits, and SIGKILLs what is left: it never touches
another Ray instance on the machine (a loop's private runtime, another user's or another
worktree's cluster), unlike ``ray stop``, which stops every Ray process of the user.

    python cluster/local_procs.py session --temp-dir T --sessions F -- ray start --head ...
    python cluster/local_procs.py list    --temp-dir T --sessions F
    python cluster/local_procs.py stop    --temp-dir T --sessions F [--grace S]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    """One row of the process table."""

    pid: int
    ppid: int
    sid: int
    args: str


def _proc_table() -> list[Proc] | None:
    """The process table from ``/proc`` (Linux), or ``None`` where there is none."""
    if not os.path.isdir("/proc/self"):
        return None
    procs = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue  # exited meanwhile
        procs.append(Proc(int(d), int(fields[1]), int(fields[3]), args))  # ppid, session id
    return procs


def process_table() -> list[Proc]:
    """Every process of the machine: ``/proc``, else ``ps`` (session id, else process group)."""
    table = _proc_table()
    if table is not None:
        return table
    for sid_field in ("sid", "pgid"):
        out = subprocess.run(
            ["ps", "-A", "-ww", "-o", "pid=", "-o", "ppid=", "-o", f"{sid_field}=", "-o", "args="],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            break
    else:
        raise SystemExit(f"error: ps failed: {out.stderr.strip()}")
    procs = []
    for line in out.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and all(p.isdigit() for p in parts[:3]):
            args = parts[3] if len(parts) > 3 else ""
            procs.append(Proc(int(parts[0]), int(parts[1]), int(parts[2]), args))
    return procs


def cluster_processes(table: list[Proc], temp_dir: str, sessions: set[int], me: int) -> list[Proc]:
    """The processes of the cluster living in ``temp_dir`` (see the module doc), in pid order."""
    names_dir = re.compile(re.escape(temp_dir.rstrip("/")) + r"(?=[/\s'\"]|$)").search
    ours = {p.sid for p in table if p.sid in sessions and names_dir(p.args)}  # still the cluster's sessions
    pids = {p.pid for p in table if p.sid in ours}
    children: dict[int, list[int]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p.pid)
    todo = list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in pids:
                pids.add(c)
                todo.append(c)
    skip = {me, os.getppid()}
    return sorted((p for p in table if p.pid in pids and p.pid not in skip), key=lambda p: p.pid)


def _read_sessions(path: str) -> set[int]:
    try:
        with open(path) as f:
            return {int(x) for x in f.read().split() if x.isdigit()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has exited
    except (OSError, IndexError):
        return True


def _session(args: argparse.Namespace) -> None:
    cmd = args.cmd
    if not cmd:
        raise SystemExit("error: session needs a command after --")
    if os.getpid() == os.getpgrp():  # a group leader cannot setsid: continue in a child
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
    os.setsid()
    sid = os.getsid(0)
    os.makedirs(os.path.dirname(os.path.abspath(args.sessions)), exist_ok=True)
    with open(args.sessions, "a") as f:
        f.write(f"{sid}\n")
    os.execvp(cmd[0], cmd)


def _find(args: argparse.Namespace) -> list[Proc]:
    return cluster_processes(process_table(), args.temp_dir, _read_sessions(args.sessions), os.getpid())


def _list(args: argparse.Namespace) -> None:
    procs = _find(args)
    if args.count:
        print(len(procs))
        return
    if not procs:
        print(f"no processes of a cluster started by local.sh in {args.temp_dir}")
        return
    print(f"`cluster/local.sh stop` would stop these {len(procs)} processes (and nothing else):")
    for p in procs:
        print(f"  {p.pid:>7}  {p.args[:150]}")


def _stop(args: argparse.Namespace) -> None:
    procs = _find(args)
    if not procs:
        print(f"no cluster started by local.sh is running in {args.temp_dir}")
        return
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + args.grace
    left = [p for p in procs if _alive(p.pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = [p for p in left if _alive(p.pid)]
    # the raylet spawns workers until it dies: kill what is left and anything started meanwhile
    killed = left + [q for q in _find(args) if q not in procs]
    for p in killed:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(p.pid) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    print(
        f"stopped the cluster in {args.temp_dir}: {len(procs)} processes "
        f"({len(left)} needed SIGKILL after {args.grace:g} s)"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line of this helper (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["session", "list", "stop"])
    ap.add_argument("--temp-dir", required=True, help="the cluster's Ray temp dir")
    ap.add_argument("--sessions", required=True, help="file of the session ids of its `ray start`s")
    ap.add_argument("--grace", type=float, default=5.0, help="stop: seconds between SIGTERM and SIGKILL")
    ap.add_argument("--count", action="store_true", help="list: print only the number of processes")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.cmd = argv[cut + 1 :]  # session: -- COMMAND ...
    {"session": _session, "list": _list, "stop": _stop}[args.action](args)


if __name__ == "__main__":
    main()
