"""``--resume RUN [--labels FILE] key=value`` on a human-oracle run, in-process through the CLI, no Ray.

* A resume's overrides apply to that invocation and reach ``config.yaml`` only when it succeeds.
* A label file that is not a regular file, too large or nested too deeply is one line, exit 2,
  checked before the lease is taken; nothing in the run directory changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from hssal_ray.cli import loop_main
from hssal_ray.errors import DataError
from hssal_ray.loop.lease import RunLease
from hssal_ray.loop.runner import LoopRunner
from hssal_ray.oracle.labels import MAX_LABEL_FILE_BYTES
from hssal_ray.state import RunState
from tests._cli import one_error_line


@pytest.fixture(scope="module")
def human_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A smoke run with ``oracle.kind=human`` waiting for its cold-start labels (made once)."""
    runs = tmp_path_factory.mktemp("human")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
        rc = loop_main(["--smoke-test", "oracle.kind=human", f"loop.run_dir={runs}", "loop.name=h"])
    run = runs / "h"
    assert rc == 0 and json.loads((run / "state.json").read_text())["status"] == "awaiting_labels"
    assert yaml.safe_load((run / "config.yaml").read_text())["oracle"]["kind"] == "human"  # at creation
    yield run


@pytest.fixture
def run(human_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the waiting run."""
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
    copy = tmp_path / "h"
    shutil.copytree(human_run, copy)
    return copy


def _snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def _labels(run: Path, path: Path, n: int | None = None, label: str | None = None) -> Path:
    """A label file answering the first ``n`` queried ids (all by default) with their true class."""
    t = pq.read_table(run / "manifest.parquet")
    truth = dict(zip(t["sample_id"].to_pylist(), t["class_name"].to_pylist(), strict=True))
    with open(run / "cold_start" / "query.csv") as f:
        ids = [r["sample_id"] for r in csv.DictReader(f)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "label"])
        w.writerows((s, label or truth[s]) for s in ids[:n])
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str], rc: int, *fragments: str) -> str:
    return one_error_line(capsys, rc, *fragments, in_stderr=True)


def _partial(run: Path) -> str:
    return yaml.safe_load((run / "config.yaml").read_text())["oracle"]["partial"]


# --------------------------------------------------------------------------- config.yaml of a resume


def test_failed_resume_leaves_config_yaml_as_it_was(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run)
    bad = _labels(run, tmp_path / "bad.csv", label="no_such_class")
    rc = loop_main(["--resume", str(run), "--labels", str(bad), "oracle.partial=continue"])
    _one_error_line(capsys, rc, "unknown class")
    assert _snapshot(run) == before and _partial(run) == "wait"
    # the next plain resume goes on with the run's own policy: a partial answer is still rejected
    rc = loop_main(["--resume", str(run), "--labels", str(_labels(run, tmp_path / "half.csv", n=3))])
    _one_error_line(capsys, rc, "queried ids without a label", "oracle.partial=continue")
    assert _snapshot(run) == before


def test_resume_that_fails_after_the_import_keeps_config_yaml(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def train(self: LoopRunner, state: RunState, t0: float) -> None:
        raise DataError("the data root went away")

    monkeypatch.setattr(LoopRunner, "_stage_train", train)
    config = (run / "config.yaml").read_bytes()
    good = _labels(run, tmp_path / "good.csv")
    rc = loop_main(["--resume", str(run), "--labels", str(good), "oracle.partial=continue", "loop.rounds=5"])
    _one_error_line(capsys, rc, "the data root went away")
    assert pq.read_table(run / "labeled.parquet").num_rows == 6  # the labels themselves went in
    assert (run / "config.yaml").read_bytes() == config


def test_successful_resume_persists_its_overrides(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loop_main(["--resume", str(run), "oracle.partial=continue"]) == 0  # still waiting: a success
    assert "awaiting_labels" in capsys.readouterr().err
    assert _partial(run) == "continue"

    # the next plain resume keeps it: half an answer is taken (then the run is stopped)
    def train(self: LoopRunner, state: RunState, t0: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LoopRunner, "_stage_train", train)
    assert loop_main(["--resume", str(run), "--labels", str(_labels(run, tmp_path / "half.csv", n=3))]) == 130
    assert pq.read_table(run / "labeled.parquet").num_rows == 3


# --------------------------------------------------------------------------- label files checked first


def test_label_file_nested_too_deeply_is_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    before = _snapshot(run)
    rc = loop_main(["--resume", str(run), "--labels", str(deep)])
    _one_error_line(capsys, rc, "deep.json", "nested too deeply", "nothing was changed")
    assert _snapshot(run) == before


def test_label_file_that_is_a_fifo_is_refused_at_once_before_the_lease(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    before = _snapshot(run)
    result: list[int] = []
    with RunLease(str(run)):  # held by another driver: the file is refused before the lease is asked
        args = ["--resume", str(run), "--labels", str(fifo)]
        worker = threading.Thread(target=lambda: result.append(loop_main(args)), daemon=True)
        worker.start()
        worker.join(timeout=30)
        if worker.is_alive():  # it blocked in open(): let it go, then fail
            with open(fifo, "w"):
                pass
            worker.join(timeout=10)
            pytest.fail("reading a FIFO label file blocked")
    _one_error_line(capsys, result[0], "labels.csv", "named pipe (FIFO), not a regular file")
    assert _snapshot(run) == before


def test_oversized_label_file_is_refused_without_reading_it(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = _labels(run, tmp_path / "big.csv")
    with open(big, "r+b") as f:
        f.truncate(MAX_LABEL_FILE_BYTES + 1)  # sparse: a valid header, then zeros
    before = _snapshot(run)
    tracemalloc.start()
    try:
        rc = loop_main(["--resume", str(run), "--labels", str(big)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_error_line(
        capsys,
        rc,
        "big.csv",
        f"{MAX_LABEL_FILE_BYTES + 1:,} bytes, over the 64 MiB limit",
        "export only this round",
    )
    assert peak < MAX_LABEL_FILE_BYTES // 4, f"{peak / 2**20:.0f} MiB allocated: the file was read"
    assert _snapshot(run) == before
