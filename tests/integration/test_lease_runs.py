"""One driver per run directory, with real CLI runs (issue 19).

* A second driver started on a running run directory exits at once (exit 3) naming the owner,
  and the first finishes with the labeled set and metrics of an uninterrupted run.
* A SIGKILLed driver leaves its lease behind (dead pid); the next driver takes it over with a
  warning and resumes the run to the same result.
* A driver stopped with SIGTERM (``kill PID``) or SIGINT (Ctrl-C: the whole process group) in the
  middle of training exits 143 or 130 with one line and no stack dump, releases its lease and
  leaves its Ray runtime stopped; the same command resumes the run to the same result.

Both compare with the session's uninterrupted ``reference_run`` and cost about one smoke run
each (2-3 min on 2 busy cores), so they are ``slow``; the same rules are checked without Ray in
``tests/unit/test_lease.py`` and ``tests/unit/test_lease_cli.py``. Run them with
``pytest -m slow tests/integration/test_lease_runs.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hssal_ray.cli import EXIT_LEASE
from hssal_ray.loop.lease import LEASE_FILE, read_lease
from tests._procs import alive
from tests.integration.conftest import SMOKE, interrupt_loop, run_cli, stage_is, start_loop, wait_for
from tests.integration.test_loop_cli import _labeled

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _timing(key: str) -> bool:
    """A ``metrics.jsonl`` key that measures time: ``wall_s``, ``query_select_s``, ..., throughput."""
    return key.endswith("_s") or key == "images_per_s_per_worker"


def _metrics(run: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without the keys that measure time."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if not _timing(k)} for r in rows]


def _close(a: Any, b: Any) -> bool:
    """Equal, with floats (also inside dicts and lists) compared to 1e-6 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-12)
    return bool(a == b)


def _assert_same_run(run: Path, reference: Path) -> None:
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    assert _labeled(run) == _labeled(reference)
    got, want = _metrics(run), _metrics(reference)
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert _close(g, w), (g, w)
    assert not (run / LEASE_FILE).exists()  # released at the end


def test_second_driver_refused_at_once_first_finishes_like_uninterrupted(
    reference_run: Path, tmp_path: Path
) -> None:
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"
    log1 = (tmp_path / "first.log").open("w")
    first = start_loop(args, log1, subprocess.STDOUT)
    try:
        # the first driver is inside round 0's training (state written, Ray running)
        def training() -> bool:
            owner = read_lease(str(run))
            try:
                st = json.loads((run / "state.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return owner is not None and owner.pid == first.pid and st.get("stage") == "train"

        wait_for(training, "it started training", first)
        t0 = time.monotonic()
        second = run_cli(*args, check=False, timeout=120)
        refused_s = time.monotonic() - t0
        assert first.poll() is None, "the first driver must still be running when the second starts"
        assert second.returncode == EXIT_LEASE, second.stderr[-3000:]
        errors = [x for x in second.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1, second.stderr[-3000:]
        assert f"pid {first.pid}" in errors[0] and "in use by another driver" in errors[0]
        assert "--force-unlock" in errors[0]
        assert refused_s < 30, refused_s  # no Ray, no data: it stops right after reading the lease
        print(f"second driver refused in {refused_s:.1f} s")
        rc = first.wait(timeout=900)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
            first.wait()
        log1.close()
    assert rc == 0, (tmp_path / "first.log").read_text()[-6000:]
    _assert_same_run(run, reference_run)


def test_stale_lease_of_killed_driver_is_taken_over_and_run_resumes(
    reference_run: Path, tmp_path: Path
) -> None:
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"
    # SIGKILL inside round 1's training: nothing releases the lease
    hold = {"HSSAL_FAULT_DELAY": "train@1=120"}
    err = tmp_path / "first.err"
    interrupt_loop(args, run, err, stage_is(1, "train"), "round 1's training", 2, signal.SIGKILL, True, hold)
    owner = read_lease(str(run))
    assert owner is not None, "the killed driver's lease must be left behind"
    assert owner.gone_reason() is not None
    proc = run_cli(*args)
    assert "taking over the lease" in proc.stderr
    assert f"its process {owner.pid} on this host is not running" in proc.stderr
    _assert_same_run(run, reference_run)


@pytest.mark.parametrize(
    ("sig", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigterm", "ctrl-c"]
)
def test_signal_mid_training_exits_cleanly_and_the_same_command_resumes(
    reference_run: Path, tmp_path: Path, sig: int, to_group: bool
) -> None:
    args = [*SMOKE, f"loop.run_dir={tmp_path}", "loop.name=ref"]
    run = tmp_path / "ref"

    def training(st: dict[str, Any]) -> bool:
        return st.get("stage") == "train" and (run / LEASE_FILE).exists()

    # 3 s: inside round 0's fit (Ray Train and Ray Data running)
    log = tmp_path / "first.err"
    rc, err, tree = interrupt_loop(args, run, log, training, "it started training", 3, sig, to_group)
    assert rc == 128 + sig, err[-4000:]
    assert err.rstrip().endswith("interrupted: re-run the same command to resume"), err[-4000:]
    for dump in ("SIGTERM received", "SIGINT received", "Aborted", "Traceback", "Fatal Python error"):
        assert dump not in err, err[-4000:]
    assert not (run / LEASE_FILE).exists()
    assert not list(run.glob(LEASE_FILE + ".*")), list(run.iterdir())
    deadline = time.monotonic() + 60
    while (left := [p for p in tree if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of its Ray runtime still running: {left}"
    proc = run_cli(*args)
    assert "taking over the lease" not in proc.stderr
    _assert_same_run(run, reference_run)


@pytest.mark.parametrize("stage", ["train", "query"])
def test_ctrl_c_of_a_ray_train_run_exits_130_in_and_after_its_fit(tmp_path: Path, stage: str) -> None:
    """Two training workers (Ray Train's ``TorchTrainer``): Ctrl-C inside round 1's ``fit()`` or in the
    stage after it stops the run like anywhere else, and the same command resumes it.

    Ray Train's ``fit()`` installs its own SIGINT handler and leaves it installed: before session 50
    the first case exited 1 without the "interrupted" line and the second was ignored (the run went
    on; `hssal_ray/ssl/trainer.py`).
    """
    args = [*SMOKE, "resources.num_workers=2", "resources.cpus_per_worker=0.5", f"loop.run_dir={tmp_path}",
            "loop.name=mw"]  # fmt: skip
    run = tmp_path / "mw"
    hold = {"HSSAL_FAULT_DELAY": f"query@1=until:{tmp_path / 'never'}"} if stage == "query" else {}
    wait_s = 5 if stage == "train" else 2  # train: inside fit() (its workers take ~20 s a round)
    rc, err, _ = interrupt_loop(
        args, run, tmp_path / "first.err", stage_is(1, stage),
        f"round 1's {stage} stage", wait_s, signal.SIGINT, True, env=hold,
    )  # fmt: skip
    assert rc == 130, err[-4000:]
    assert err.rstrip().endswith("interrupted: re-run the same command to resume"), err[-4000:]
    assert not (run / LEASE_FILE).exists()
    proc = run_cli(*args)
    assert "taking over the lease" not in proc.stderr
    assert json.loads((run / "state.json").read_text())["status"] == "done"
