"""The live Label Studio oracle on the wire, against a stdlib stand-in of its REST API.

Whose tasks a run reads (two runs sharing a project), which project is the run's (URL spellings),
what the person at the console sees while the run waits, and how failed polls are retried. The
same guarantees are checked against a real Label Studio server in
``tests/integration/test_label_studio.py`` (marker ``label_studio``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError, LabelFileError
from hssal_ray.loop.stages import label as label_stage
from hssal_ray.oracle import HumanOracle, LabelStudioOracle
from hssal_ray.oracle.factory import check_oracle
from hssal_ray.oracle.label_studio import PROJECT_FILE, PUSH_FILE, RUN_ID_FIELD, LabelStudioError
from hssal_ray.state import RunState, new_run_id
from tests.unit.oracle.fake_label_studio import FakeLabelStudio

CLASSES = ["airplane", "beach", "forest"]


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    server = FakeLabelStudio()
    try:
        yield server
    finally:
        server.stop()


def _run(parent: Path, ids: list[str], name: str = "lsrun") -> Path:
    """A run directory (``state.json`` with a fresh run id) whose cold start queried ``ids``."""
    run = parent / name
    (run / "cold_start").mkdir(parents=True)
    rows = "".join(f"{s},{i},,\n" for i, s in enumerate(ids, start=1))
    (run / "cold_start" / "query.csv").write_text("sample_id,rank,u,coarse_cluster\n" + rows)
    RunState(config_sha="x" * 16, run_id=new_run_id()).save(str(run))
    return run


class _Clock:
    """A fake monotonic clock; ``sleep`` advances it and runs the hooks due by then."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.hooks: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        for due, hook in [h for h in self.hooks if h[0] <= self.now]:
            self.hooks.remove((due, hook))
            hook()


def _oracle(fake: FakeLabelStudio, url: str | None = None, **kw: object) -> LabelStudioOracle:
    kw.setdefault("progress", lambda line: None)
    return LabelStudioOracle(CLASSES, url=url or fake.url, token=fake.token, **kw)  # type: ignore[arg-type]


def _answer_all(fake: FakeLabelStudio, run: Path, truth: Callable[[str], str] | None = None) -> None:
    """Answer the tasks of ``run``'s cold start, each with the class folder of its sample."""
    push = json.loads((run / "cold_start" / PUSH_FILE).read_text())
    for ref, tid in push["tasks"].items():
        sid = push["samples"][ref]
        fake.annotate(tid, (truth or (lambda s: s.split("/")[0]))(sid))


def test_two_runs_sharing_a_project_never_take_each_others_annotations(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    first = _run(tmp_path / "a", ["airplane/a1.jpg", "beach/b1.jpg", "forest/f1.jpg"])
    a = _oracle(fake, hide_sample_id=True)  # the default on folder data: tasks show refs, not sample ids
    ids_a = ["airplane/a1.jpg", "beach/b1.jpg", "forest/f1.jpg"]
    assert a.collect(str(first / "cold_start"), ids_a) is None
    _answer_all(fake, first)
    pid = json.loads((first / PROJECT_FILE).read_text())["project_id"]

    # same loop.name, other directory and samples, the first run's project: its own tasks, its own labels
    ids_b = ["beach/b2.jpg", "forest/f2.jpg", "airplane/a2.jpg"]
    second = _run(tmp_path / "b", ids_b)
    b = _oracle(fake, project_id=pid, hide_sample_id=True)
    assert b.collect(str(second / "cold_start"), ids_b) is None  # nothing answered yet: it waits
    assert len(fake.tasks) == 6  # pushed its own three tasks next to the first run's
    run_ids = {t["data"][RUN_ID_FIELD] for t in fake.tasks.values()}
    assert run_ids == {RunState.load(str(first)).run_id, RunState.load(str(second)).run_id}
    _answer_all(fake, second)
    answer = b.collect(str(second / "cold_start"), ids_b)
    assert answer is not None and answer.labels == {s: CLASSES.index(s.split("/")[0]) for s in ids_b}
    assert a.collect(str(first / "cold_start"), ids_a).labels == {  # type: ignore[union-attr]
        s: CLASSES.index(s.split("/")[0]) for s in ids_a
    }


def test_a_changed_task_is_refused_and_a_deleted_one_is_named_and_pushed_again(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg", "forest/f1.jpg"]
    run = _run(tmp_path, ids)
    lines: list[str] = []
    oracle = _oracle(fake, progress=lines.append)
    cold = str(run / "cold_start")
    oracle.request(cold, ids, {"image_paths": {s: f"/data/{s}" for s in ids}})
    _answer_all(fake, run)
    push = json.loads((run / "cold_start" / PUSH_FILE).read_text())
    tid = push["tasks"]["lsrun:cold_start:2"]
    fake.tasks[tid]["data"]["image"] = "/data/forest/f9.jpg"  # someone pointed the task at another image
    before = sorted(p.name for p in (run / "cold_start").iterdir())
    with pytest.raises(LabelFileError) as info:
        oracle.collect(cold, ids)
    msg = str(info.value)
    assert f"task {tid} (another image than the one pushed)" in msg and "nothing was changed" in msg
    assert sorted(p.name for p in (run / "cold_start").iterdir()) == before  # no labels.csv

    del fake.tasks[tid]  # deleted in Label Studio: under partial=wait it is pushed again, named
    assert oracle.collect(cold, ids) is None
    assert any("1 task(s) were deleted" in line and "'beach/b1.jpg'" in line for line in lines)
    (new,) = [t for t in fake.tasks.values() if t["data"]["ref"] == "lsrun:cold_start:2"]
    assert new["id"] != tid and new["data"]["image"] == "/data/beach/b1.jpg"
    fake.annotate(new["id"], "beach")
    answer = oracle.collect(cold, ids)
    assert answer is not None and answer.labels == {s: CLASSES.index(s.split("/")[0]) for s in ids}


def test_deleted_task_is_left_out_under_partial_continue(fake: FakeLabelStudio, tmp_path: Path) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg"]
    run = _run(tmp_path, ids)
    lines: list[str] = []
    oracle = _oracle(fake, progress=lines.append, partial="continue")
    assert oracle.collect(str(run / "cold_start"), ids) is None
    push = json.loads((run / "cold_start" / PUSH_FILE).read_text())
    fake.annotate(push["tasks"]["lsrun:cold_start:1"], "airplane")
    del fake.tasks[push["tasks"]["lsrun:cold_start:2"]]
    answer = oracle.collect(str(run / "cold_start"), ids)
    assert (
        answer is not None and answer.labels == {"airplane/a1.jpg": 0} and answer.missing == ["beach/b1.jpg"]
    )
    assert any("'beach/b1.jpg'" in line and "left out" in line for line in lines)
    assert len(fake.tasks) == 1  # not pushed again


def test_the_runs_project_is_the_runs_whatever_spelling_of_the_url(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg"]
    run = _run(tmp_path, ids)
    cold = str(run / "cold_start")
    assert _oracle(fake).collect(cold, ids) is None
    record = json.loads((run / PROJECT_FILE).read_text())
    port = fake.url.rsplit(":", 1)[1]
    for url in (f"http://localhost:{port}", f"http://localhost:{port}/", f"{fake.url}/"):
        assert _oracle(fake, url=url).collect(cold, ids) is None
    assert len(fake.projects) == 1 and len(fake.tasks) == 2  # no new project, nothing pushed twice
    assert json.loads((run / PROJECT_FILE).read_text()) == record

    other = FakeLabelStudio(token=fake.token)  # another server, where project ids start over
    try:
        other.projects[record["project_id"]] = {"id": record["project_id"], "title": "hssal lsrun"}
        with pytest.raises(ConfigError) as info:
            _oracle(other).collect(cold, ids)
        msg = str(info.value)
        assert f"at {fake.url}, but oracle.url={other.url} is another server" in msg
        assert "is not this run's" in msg and f"Resume with oracle.url={fake.url}" in msg
        del other.projects[record["project_id"]]
        with pytest.raises(ConfigError, match=f"is another server: it has no project {record['project_id']}"):
            _oracle(other).collect(cold, ids)
        assert not other.tasks
    finally:
        other.stop()


def test_a_failed_poll_is_retried_with_backoff_until_the_server_is_back(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg"]
    run = _run(tmp_path, ids)
    clock, lines = _Clock(), []
    oracle = _oracle(fake, wait_s=3600, poll_s=10, progress=lines.append, sleep=clock.sleep, clock=clock)
    assert _oracle(fake).collect(str(run / "cold_start"), ids) is None  # pushed; now the long wait
    fake.fail_next = ["503", "drop", "502"]

    def restart() -> None:  # the server goes away for a while, comes back, and the person labels
        fake.stop()
        clock.hooks.append((clock.now + 20, lambda: (fake.start(), _answer_all(fake, run))))

    clock.hooks.append((30, restart))
    answer = oracle.collect(str(run / "cold_start"), ids)
    assert answer is not None and answer.labels == {"airplane/a1.jpg": 0, "beach/b1.jpg": 1}
    # 503, a dropped connection, 502: 1, 2, 4 s; three polls; refused from 37 s to 57 s: 1, 2, 4, 8, 16 s
    assert clock.sleeps == [1, 2, 4, 10, 10, 10, 1, 2, 4, 8, 16]
    retries = [line for line in lines if "Trying again" in line]
    assert len(retries) == 8 and sum("Connection refused" in line for line in retries) == 5
    assert all("\n" not in line and "<html" not in line for line in retries)


def test_an_import_whose_answer_was_lost_is_not_imported_twice(fake: FakeLabelStudio, tmp_path: Path) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg"]
    run = _run(tmp_path, ids)
    clock = _Clock()
    oracle = _oracle(fake, sleep=clock.sleep, clock=clock)
    fake.fail_next = ["lost@/import"]  # the server imports the batch; its answer never arrives
    assert oracle.collect(str(run / "cold_start"), ids) is None
    assert clock.sleeps == [1] and len(fake.tasks) == 2  # retried once, the imported tasks adopted
    push = json.loads((run / "cold_start" / PUSH_FILE).read_text())
    assert sorted(push["tasks"].values()) == sorted(fake.tasks)
    del fake.tasks[push["tasks"]["lsrun:cold_start:2"]]  # deleted; pushing it again loses the answer too
    fake.fail_next = ["lost@/import"]
    assert oracle.collect(str(run / "cold_start"), ids) is None
    assert len(fake.tasks) == 2 and clock.sleeps == [1, 1]


def test_retries_give_up_after_retry_s_with_the_resume_command(fake: FakeLabelStudio, tmp_path: Path) -> None:
    ids = ["airplane/a1.jpg"]
    run = _run(tmp_path, ids)
    assert _oracle(fake).collect(str(run / "cold_start"), ids) is None
    fake.stop()
    clock = _Clock()
    oracle = _oracle(fake, wait_s=600, retry_s=30, sleep=clock.sleep, clock=clock)
    with pytest.raises(LabelStudioError) as info:
        oracle.collect(str(run / "cold_start"), ids)
    assert clock.sleeps == [1, 2, 4, 8]  # 15 s; the next delay (16 s) would pass retry_s
    msg = str(info.value)
    assert "Gave up" in msg and f"--resume {run}" in msg and "\n" not in msg


def test_waiting_tells_the_person_where_and_how_many_then_every_minute(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    ids = ["airplane/a1.jpg", "beach/b1.jpg", "forest/f1.jpg"]
    run = _run(tmp_path, ids)
    clock, lines = _Clock(), []
    oracle = _oracle(fake, wait_s=600, poll_s=10, progress=lines.append, sleep=clock.sleep, clock=clock)

    def one() -> None:
        push = json.loads((run / "cold_start" / PUSH_FILE).read_text())
        fake.annotate(push["tasks"]["lsrun:cold_start:1"], "airplane")

    clock.hooks += [(45, one), (150, lambda: _answer_all(fake, run))]
    fake_answered = oracle.collect(str(run / "cold_start"), ids)
    assert fake_answered is not None
    pid = json.loads((run / PROJECT_FILE).read_text())["project_id"]
    first = lines[0]
    assert first.startswith("[hssal] cold start: 3 of 3 samples to label in Label Studio")
    assert f"{fake.url}/projects/{pid}/data" in first and "up to 10 min" in first and "--resume" in first
    progress = [line for line in lines[1:] if "labeled in Label Studio" in line]
    assert progress == [
        "[hssal] cold start: 1 of 3 labeled in Label Studio, 0 skipped, 2 to do (waited 60 s of 10 min)",
        "[hssal] cold start: 1 of 3 labeled in Label Studio, 0 skipped, 2 to do (waited 2 min of 10 min)",
    ]


def test_a_wrong_url_is_one_line_without_the_page(fake: FakeLabelStudio) -> None:
    fake.html_everywhere = True
    oc = load_config(None, ["oracle.kind=label_studio", f"oracle.url={fake.url}/wrong"]).oracle
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABEL_STUDIO_API_KEY", fake.token)
        with pytest.raises(LabelStudioError) as info:
            check_oracle(oc)
    msg = str(info.value)
    assert msg == (
        f"{fake.url}/wrong answered GET /api/current-user/whoami with HTTP 404 Not Found (a text/html page, "
        f"not Label Studio's JSON API): is oracle.url={fake.url}/wrong a Label Studio server?"
    )


def test_server_and_token_are_checked_before_the_data_set_is_built(
    fake: FakeLabelStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hssal_ray.loop.runner import LoopRunner

    def no_data_set(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data set was built before the Label Studio check")

    monkeypatch.setattr("hssal_ray.data.bootstrap.ensure", no_data_set)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    over = ["oracle.kind=label_studio", f"oracle.url={fake.url}", f"loop.run_dir={tmp_path}", "loop.name=r"]
    with pytest.raises(LabelStudioError, match=r"HTTP 401 .*API token from \$LABEL_STUDIO_API_KEY"):
        LoopRunner(load_config(None, over), progress=lambda s: None).run()
    assert fake.requests == ["GET /api/current-user/whoami"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", fake.token)
    with pytest.raises(ConfigError, match="oracle.project_id=7: Label Studio at .* has no project 7"):
        LoopRunner(load_config(None, [*over, "oracle.project_id=7"]), progress=lambda s: None).run()
    fake.stop()
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        LoopRunner(load_config(None, over), progress=lambda s: None).run()


def test_cold_start_and_round_0_are_announced_apart(tmp_path: Path) -> None:
    run = _run(tmp_path, ["airplane/a1.jpg"])
    (run / "round_000").mkdir()
    (run / "round_000" / "query.csv").write_text("sample_id,rank,u,coarse_cluster\nbeach/b1.jpg,1,,\n")
    lines: list[str] = []
    ctx = SimpleNamespace(run_dir=str(run), oracle=HumanOracle(CLASSES), progress=lines.append)
    label_stage.run(ctx, RunState(stage="init", round=0), 0.0)  # type: ignore[arg-type]
    label_stage.run(ctx, RunState(stage="label", round=0), 0.0)  # type: ignore[arg-type]
    assert "(cold_start, 1 samples)" in lines[0] and "round 0" not in lines[0]
    assert "(round 0, 1 samples)" in lines[1]
