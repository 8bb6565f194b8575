"""The fault hooks (``hssal_ray.faults``): off unless set, and only for the named stage and round."""

from __future__ import annotations

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
