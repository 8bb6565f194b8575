"""A run directory written before the ``frozen.*`` section resumes (in-process CLI, no Ray).

Its ``config.yaml`` holds the frozen path's keys under ``ssl`` and its ``state.json`` the identity
computed then (pinned here): the resume is accepted, a successful one rewrites ``config.yaml`` in the
new layout, a failed one leaves it as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hssal_ray.cli import loop_main
from hssal_ray.config.frozen import MOVED_FROM_SSL
from hssal_ray.errors import DataError
from hssal_ray.loop.runner import LoopRunner
from hssal_ray.state import RunState

from .test_resume_cli import _labels, _one_error_line

OLD_SHA = "384d95708f663aaa"
"""``science_sha`` of the run below, computed before the ``frozen`` section existed."""

OVERRIDES = ["ssl.finetune=frozen", "frozen.embed_views=1", "frozen.feature_norm=none"]


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A frozen smoke run with ``oracle.kind=human`` waiting for its cold-start labels (made once)."""
    runs = tmp_path_factory.mktemp("old_layout")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
        rc = loop_main(
            ["--smoke-test", "oracle.kind=human", f"loop.run_dir={runs}", "loop.name=f", *OVERRIDES]
        )
    assert rc == 0
    yield runs / "f"


@pytest.fixture
def old_run(frozen_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the waiting run whose ``config.yaml`` is in the layout of before the section."""
    monkeypatch.setattr("hssal_ray._ray.ensure_ray", lambda resources: None)
    run = tmp_path / "f"
    shutil.copytree(frozen_run, run)
    d = yaml.safe_load((run / "config.yaml").read_text())
    d["ssl"].update(d.pop("frozen"))
    (run / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert json.loads((run / "state.json").read_text())["config_sha"] == OLD_SHA
    return run


def _layout(run: Path) -> tuple[set[str], set[str]]:
    """(moved keys under ``ssl``, keys under ``frozen``) of the run's ``config.yaml``."""
    d = yaml.safe_load((run / "config.yaml").read_text())
    return set(MOVED_FROM_SSL) & set(d["ssl"]), set(d.get("frozen", {}))


def test_a_successful_resume_keeps_the_identity_and_writes_the_new_layout(
    old_run: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hssal_ray.config.loading"):
        assert loop_main(["--resume", str(old_run)]) == 0  # still waiting for labels: a success
    assert "awaiting_labels" in capsys.readouterr().err
    assert any("ssl.feature_norm is now frozen.feature_norm" in r.getMessage() for r in caplog.records)
    state = json.loads((old_run / "state.json").read_text())
    assert state["config_sha"] == OLD_SHA and state["status"] == "awaiting_labels"
    assert _layout(old_run) == (set(), set(MOVED_FROM_SSL))
    cfg = yaml.safe_load((old_run / "config.yaml").read_text())
    assert cfg["frozen"]["feature_norm"] == "none" and cfg["frozen"]["embed_views"] == 1


def test_a_failed_resume_leaves_the_old_config_yaml(
    old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def train(self: LoopRunner, state: RunState, t0: float) -> None:
        raise DataError("the data root went away")

    monkeypatch.setattr(LoopRunner, "_stage_train", train)
    before = (old_run / "config.yaml").read_bytes()
    rc = loop_main(["--resume", str(old_run), "--labels", str(_labels(old_run, tmp_path / "good.csv"))])
    _one_error_line(capsys, rc, "the data root went away")
    assert (old_run / "config.yaml").read_bytes() == before
    assert _layout(old_run) == (set(MOVED_FROM_SSL), set())
    assert json.loads((old_run / "state.json").read_text())["config_sha"] == OLD_SHA


def test_an_old_layout_resume_with_a_changed_key_is_refused(
    old_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (old_run / "config.yaml").read_bytes()
    rc = loop_main(["--resume", str(old_run), "frozen.feature_norm=l2"])
    _one_error_line(capsys, rc, "different config")
    assert (old_run / "config.yaml").read_bytes() == before
