"""Process measurements from ``/proc`` (Linux; no psutil, which the lock does not pin), for every benchmark.

* CPU seconds of a set of processes (:class:`CpuTracker`, :func:`process_cpu_seconds`,
  :func:`descendants`): robust to the other jobs of a shared machine, unlike wall time;
* peak memory of this process: ``VmHWM`` (:func:`peak_mb`), which :func:`reset_peak_rss` sets back
  to the current RSS so that a stage's own peak can be read, and ``getrusage`` (:func:`peak_rss_mb`);
* the RSS of this driver's Ray processes, sampled in a background thread (:class:`RaySampler`).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "CpuTracker",
    "RaySampler",
    "cmdline",
    "descendants",
    "peak_mb",
    "peak_rss_mb",
    "proc_status",
    "process_cpu_seconds",
    "reset_peak_rss",
]

log = logging.getLogger("benchmarks")


def peak_rss_mb(children: bool = False) -> float:
    """Peak RSS of this process (or of its waited-for children) in MiB, from ``getrusage``."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


class CpuTracker:
    """CPU seconds (user + system, ``/proc``) consumed by a set of processes: robust to others' load.

    On a shared 2-core machine wall-clock rates mostly measure the neighbours; the CPU time a
    pipeline burns per image does not depend much on them. The tracker remembers the last value
    seen for every process, so processes that exit between samples keep their share (the total
    never goes down), and it can sample in a background thread so that CPU time in any time window
    can be read off later (:meth:`between`).

    Args:
        select: Returns the pids to account for at each sample (default: this process and all
            its descendants; Ray's daemons and workers are descendants of the driver that started
            the runtime, DataLoader workers are children).
    """

    def __init__(self, select: Callable[[], Iterable[int]] | None = None) -> None:
        self._select = select or (lambda: descendants(include_self=True))
        self._last: dict[int, float] = {}
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def total(self) -> float:
        """Sample now; CPU seconds of every process ever selected (up to its last sample)."""
        for pid in self._select():
            t = process_cpu_seconds(pid)
            if t is None:
                continue
            with self._lock:
                self._last[pid] = max(self._last.get(pid, 0.0), t)
        with self._lock:
            return sum(self._last.values())

    def start(self, interval: float = 0.5) -> CpuTracker:
        """Sample ``(time.time(), total())`` every ``interval`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.is_set():
                self._samples.append((time.time(), self.total()))
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="cpu-tracker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds between wall times ``t0`` and ``t1`` (``time.time()``), linearly interpolated."""
        xs = list(self._samples)
        if len(xs) < 2 or not xs[0][0] <= t0 <= t1 <= xs[-1][0]:
            return float("nan")

        def at(t: float) -> float:
            for (ta, ca), (tb, cb) in zip(xs, xs[1:], strict=False):
                if ta <= t <= tb:
                    return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
            return float("nan")

        return at(t1) - at(t0)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (``state`` first), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), from ``/proc``; None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


def descendants(pid: int | None = None, *, include_self: bool = False) -> list[int]:
    """Pids of all descendants of ``pid`` (default: this process), optionally with ``pid`` itself.

    Reads the parent of every process in ``/proc`` (Linux; no psutil, which the lock does not pin).
    """
    root = pid or os.getpid()
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return [root] if include_self else []
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return ([root] if include_self else []) + out


def proc_status(pid: int | str) -> dict[str, int]:
    """``Vm*``/``Rss*`` fields (KiB) of ``/proc/<pid>/status``; empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssShmem:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    """The first 200 bytes of a process's command line (``/proc``); empty if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(200).replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``/proc/self/clear_refs``); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """This process's ``VmHWM`` (peak RSS since start or the last :func:`reset_peak_rss`) in MiB."""
    return proc_status("self").get("VmHWM", 0) / 1024


class RaySampler:
    """Samples the RSS of this driver's Ray processes every ``interval`` s (background thread).

    Worker processes are the descendants whose command line starts with ``ray::`` (``ray::IDLE``,
    ``ray::MapWorker(...)``, ...); the others (raylet, gcs_server, dashboard, ...) are "daemons".
    Statistics are kept per *stage* (set with :meth:`stage`): the largest single worker RSS, the
    largest sum over workers, and the largest sum over daemons, in MiB; plus every worker's ``VmHWM``.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.current = "start"
        self.stats: dict[str, dict[str, float]] = {}
        self.hwm: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.daemon_peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ray-rss", daemon=True)

    def start(self) -> RaySampler:
        self._thread.start()
        return self

    def stage(self, name: str) -> None:
        """Attribute the following samples to stage ``name`` (one sample is taken now)."""
        self.sample()
        with self._lock:
            self.current = name
        self.sample()

    def sample(self) -> None:
        workers, daemons, anon = [], 0.0, []
        me = os.getpid()
        for pid in descendants(me):
            st = proc_status(pid)
            if not st:
                continue
            name = self.names.get(pid) or cmdline(pid)
            self.names[pid] = name
            rss = st.get("VmRSS", 0) / 1024
            if name.startswith("ray::"):
                workers.append(rss)
                anon.append(st.get("RssAnon", 0) / 1024)
                self.hwm[pid] = max(self.hwm.get(pid, 0.0), st.get("VmHWM", 0) / 1024)
            else:
                daemons += rss
                key = " ".join(os.path.basename(w) for w in name.split()[:3])[:80]
                self.daemon_peaks[key] = max(self.daemon_peaks.get(key, 0.0), rss)
        drv = proc_status(me)
        with self._lock:
            s = self.stats.setdefault(
                self.current,
                {
                    "worker_max_rss_mb": 0.0,
                    "worker_max_anon_mb": 0.0,
                    "workers_sum_rss_mb": 0.0,
                    "daemons_sum_rss_mb": 0.0,
                    "driver_max_anon_mb": 0.0,
                    "driver_max_shmem_mb": 0.0,
                    "max_workers": 0,
                    "samples": 0,
                },
            )
            s["driver_max_anon_mb"] = max(s["driver_max_anon_mb"], drv.get("RssAnon", 0) / 1024)
            s["driver_max_shmem_mb"] = max(s["driver_max_shmem_mb"], drv.get("RssShmem", 0) / 1024)
            s["worker_max_rss_mb"] = max(s["worker_max_rss_mb"], max(workers, default=0.0))
            s["worker_max_anon_mb"] = max(s["worker_max_anon_mb"], max(anon, default=0.0))
            s["workers_sum_rss_mb"] = max(s["workers_sum_rss_mb"], sum(workers))
            s["daemons_sum_rss_mb"] = max(s["daemons_sum_rss_mb"], daemons)
            s["max_workers"] = max(s["max_workers"], len(workers))
            s["samples"] += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a vanished process must not kill the sampler
                log.debug("sample failed", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
