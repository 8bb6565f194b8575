"""The benchmarks' /proc sampler: CPU seconds, peak RSS and the RSS of a driver's Ray processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks._sampler import (
    CpuTracker,
    RaySampler,
    cmdline,
    descendants,
    peak_mb,
    proc_status,
    process_cpu_seconds,
    reset_peak_rss,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")


def test_status_and_peak_of_this_process() -> None:
    st = proc_status("self")
    assert {"VmRSS", "VmHWM"} <= set(st) and st["VmHWM"] >= st["VmRSS"] > 0
    assert proc_status(2**22 + 12345) == {}  # no such process
    if not reset_peak_rss():
        pytest.skip("VmHWM cannot be reset here")
    before = peak_mb()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB touched
    grown = peak_mb()
    del block
    assert grown - before > 48
    reset_peak_rss()
    assert peak_mb() < grown - 32  # the peak starts again from the current RSS


def test_cpu_seconds_of_descendants_are_counted_and_kept_after_they_exit() -> None:
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(0.5)"
    child = subprocess.Popen([sys.executable, "-c", code])
    tracker = CpuTracker(lambda: [child.pid]).start(0.05)
    try:
        assert child.pid in descendants() and child.pid in descendants(include_self=True)
        assert os.getpid() in descendants(include_self=True) and os.getpid() not in descendants()
    finally:
        child.wait(timeout=60)
    time.sleep(0.1)
    tracker.stop()
    assert process_cpu_seconds(child.pid) is None  # gone
    assert tracker.total() >= 0.45  # its last sample is kept
    t0, t1 = tracker._samples[0][0], tracker._samples[-1][0]
    assert tracker.between(t0, t1) == pytest.approx(tracker._samples[-1][1] - tracker._samples[0][1])
    assert np.isnan(tracker.between(t0 - 60, t1))  # outside the sampled window


def test_ray_sampler_tells_workers_from_daemons_per_stage() -> None:
    worker = subprocess.Popen(["ray::IDLE", "30"], executable="/bin/sleep")
    daemon = subprocess.Popen(["raylet", "30"], executable="/bin/sleep")
    try:
        deadline = time.monotonic() + 10  # /proc/PID/cmdline is empty until the child has exec'd
        while not (cmdline(worker.pid) and cmdline(daemon.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cmdline(worker.pid).startswith("ray::IDLE")
        sampler = RaySampler(interval=0.05).start()
        sampler.stage("score")
        time.sleep(0.2)
        sampler.stop()
    finally:
        for p in (worker, daemon):
            p.kill()
            p.wait()
    s = sampler.stats["score"]
    assert s["max_workers"] == 1 and s["samples"] >= 2
    assert s["worker_max_rss_mb"] > 0 and s["daemons_sum_rss_mb"] > 0
    assert list(sampler.hwm) == [worker.pid]
    assert any(k.startswith("raylet") for k in sampler.daemon_peaks)
