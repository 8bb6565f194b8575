"""The lease through the CLI (``python -m hssal_ray.loop``), in-process and without Ray.

A refused driver stops before it writes or starts anything, and a finished run resumes without
Ray, so these are fast. The full two-driver and killed-driver runs are in
``tests/integration/test_lease_runs.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hssal_ray.cli import EXIT_LEASE, SMOKE_OVERRIDES, loop_main
from hssal_ray.config import config_to_yaml, load_config
from hssal_ray.errors import ConfigError, LeaseLostError
from hssal_ray.loop.lease import LEASE_FILE, LeaseOwner, RunLease, read_lease
from hssal_ray.loop.runner import science_sha
from hssal_ray.state import RunState


def _args(runs: Path, *extra: str) -> list[str]:
    return ["--smoke-test", f"loop.run_dir={runs}", "loop.name=r", *extra]


def _finished_run(runs: Path) -> Path:
    """A run directory whose state says done (resuming it only reports that, and starts no Ray)."""
    cfg = load_config(None, [*SMOKE_OVERRIDES, f"loop.run_dir={runs}", "loop.name=r"])
    run = Path(cfg.run_path)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    RunState(round=2, stage="done", status="done", config_sha=science_sha(cfg), seed=cfg.seed).save(str(run))
    return run


def test_second_driver_exits_3_at_once_naming_the_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    with RunLease(str(run)) as first:
        rc = loop_main(_args(tmp_path))
        err = capsys.readouterr().err
        assert rc == EXIT_LEASE == 3
        line = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(line) == 1, err
        assert f"pid {first.owner.pid}" in line[0] and "in use by another driver" in line[0]  # type: ignore[union-attr]
        assert "--force-unlock" in line[0]
        assert sorted(p.name for p in run.iterdir()) == [LEASE_FILE]  # nothing written, nothing started
        first.check()  # still the first driver's


def test_labels_import_takes_the_lease(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _finished_run(tmp_path)
    state = json.loads((run / "state.json").read_text())
    state.update(status="awaiting_labels", stage="label")
    (run / "state.json").write_text(json.dumps(state))
    (tmp_path / "labels.csv").write_text("sample_id,label\n")
    with RunLease(str(run)):
        rc = loop_main(["--resume", str(run), "--labels", str(tmp_path / "labels.csv")])
    assert rc == EXIT_LEASE
    assert "in use by another driver" in capsys.readouterr().err
    assert json.loads((run / "state.json").read_text()) == state


def test_stale_lease_of_dead_driver_taken_over_with_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = _finished_run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = LeaseOwner.this_process(60, command="python -m hssal_ray.loop (killed)")
    (run / LEASE_FILE).write_bytes(LeaseOwner(**{**me.__dict__, "pid": dead.pid}).to_bytes())  # type: ignore[arg-type]
    assert socket.gethostname() == me.host and dead.pid != os.getpid()
    with caplog.at_level(logging.WARNING, logger="hssal_ray"):
        rc = loop_main(["--resume", str(run)])
    assert rc == 0
    assert f"its process {dead.pid} on this host is not running" in caplog.text
    assert "already finished" in capsys.readouterr().err
    assert not (run / LEASE_FILE).exists()  # released on the way out


def test_force_unlock_takes_over_a_live_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = _finished_run(tmp_path)
    other = RunLease(str(run), heartbeat_s=0.05).acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="hssal_ray"):
            rc = loop_main(["--resume", str(run), "--force-unlock"])
        assert rc == 0, capsys.readouterr().err
        assert "--force-unlock" in caplog.text and f"pid {other.owner.pid}" in caplog.text  # type: ignore[union-attr]
        with pytest.raises(LeaseLostError):  # the old holder stops at its next check
            other.check()
    finally:
        other.release()
    assert read_lease(str(run)) is None


def test_lease_timeout_is_a_runtime_setting() -> None:
    a = load_config(None, ["loop.lease_timeout_s=5"])
    b = load_config(None, [])
    assert a.loop.lease_timeout_s == 5.0 and b.loop.lease_timeout_s == 60.0
    assert science_sha(a) == science_sha(b)  # resuming with another timeout is the same run
    with pytest.raises(ConfigError, match="loop.lease_timeout_s"):
        load_config(None, ["loop.lease_timeout_s=0"])


def test_state_write_guard_blocks_the_write(tmp_path: Path) -> None:
    st = RunState()
    st.save(str(tmp_path))
    before = (tmp_path / "state.json").read_text()

    def lost() -> None:
        raise LeaseLostError("taken over")

    st.set_write_guard(lost)
    st.stage = "train"
    with pytest.raises(LeaseLostError):
        st.save(str(tmp_path))
    assert (tmp_path / "state.json").read_text() == before
    assert "_write_guard" not in json.loads(before)


def test_driver_that_lost_its_lease_stops_before_the_next_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken over after its cold start, the driver stops at the stage boundary and writes no more."""
    from hssal_ray.loop.runner import LoopRunner

    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)  # the cold start needs no Ray
    thief = LeaseOwner(**{**LeaseOwner.this_process(60).__dict__, "owner_id": "thief", "host": "elsewhere"})

    class Runner(LoopRunner):
        def _stage_init(self, state: RunState, t0: float) -> None:
            super()._stage_init(state, t0)
            (Path(self.run_dir) / LEASE_FILE).write_bytes(thief.to_bytes())  # e.g. --force-unlock elsewhere

        def _stage_train(self, state: RunState, t0: float) -> None:
            raise AssertionError("a driver that lost its lease must not start the next stage")

    cfg = load_config(None, [*SMOKE_OVERRIDES, f"loop.run_dir={tmp_path}", "loop.name=r"])
    with pytest.raises(LeaseLostError, match="taken over by host elsewhere"):
        Runner(cfg, progress=lambda s: None).run()
    st = json.loads((tmp_path / "r" / "state.json").read_text())
    assert (st["round"], st["stage"]) == (0, "train")  # the cold start it finished, nothing after
    assert read_lease(str(tmp_path / "r")) == thief  # left to the new owner
