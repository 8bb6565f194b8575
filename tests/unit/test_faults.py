"""The fault hooks (``hssal_ray.faults``): off unless set, and only for the named stage and round."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hssal_ray import faults


def _held(stage: str, r: int) -> float:
    t0 = time.monotonic()
    faults.delay_stage(stage, r, poll_s=0.01)
    return time.monotonic() - t0


def test_delay_is_off_unless_set_and_only_for_its_stage_and_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.DELAY_ENV, raising=False)
    assert _held("train", 1) < 0.05
    monkeypatch.setenv(faults.DELAY_ENV, "train@1=0.3,query@2=0.2")
    assert _held("train", 1) >= 0.3
    assert _held("query", 2) >= 0.2
    assert _held("train", 2) < 0.05 and _held("score", 1) < 0.05


def test_until_holds_the_stage_until_the_file_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    go = tmp_path / "go"
    monkeypatch.setenv(faults.DELAY_ENV, f"train@3=until:{go}")
    assert _held("train", 2) < 0.05  # another round: not held
    timer = threading.Timer(0.4, go.touch)
    timer.start()
    try:
        held = _held("train", 3)
    finally:
        timer.cancel()
    assert 0.4 <= held < 5.0
    assert _held("train", 3) < 0.05  # the file is there: no hold


def test_until_gives_up_after_the_longest_hold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(faults.DELAY_ENV, f"train@0=until:{tmp_path / 'never'}")
    monkeypatch.setattr(faults, "HOLD_MAX_S", 0.2)
    assert 0.2 <= _held("train", 0) < 5.0


def _fire(marker: str, times: int, start: float, out: object) -> None:
    while time.time() < start:  # every process reaches the marker at the same moment
        pass
    out.put(faults._first_time(marker, f"fired {os.getpid()}\n", times))  # type: ignore[attr-defined]


@pytest.mark.parametrize("times", [1, 3])
def test_a_marker_fires_its_times_in_all_when_processes_race_for_it(tmp_path: Path, times: int) -> None:
    """Actors reaching the same batch at once (two store shards did, in CI) fire ``times`` times in all."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(5):
        marker = str(tmp_path / f"m{attempt}")
        q = ctx.Queue()
        start = time.time() + 0.3
        procs = [ctx.Process(target=_fire, args=(marker, times, start, q)) for _ in range(8)]
        for p in procs:
            p.start()
        fired = sum(q.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert fired == times, f"attempt {attempt}: {fired} firings for times={times}"
        assert len(Path(marker).read_text().splitlines()) == times


def test_an_existing_marker_counts_as_one_firing(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    marker.write_text("")
    assert not faults._first_time(str(marker), "x\n")
    assert faults._first_time(str(marker), "x\n", times=2) and marker.read_text() == "x\n"
    assert faults._first_time(str(marker), "y\n", times=2)  # one line counts one firing
    assert not faults._first_time(str(marker), "z\n", times=2) and marker.read_text() == "x\ny\n"
    fresh = tmp_path / "fresh"
    assert faults._first_time(str(fresh), "a\n") and not faults._first_time(str(fresh), "b\n")
    assert not faults._first_time("", "a\n")
