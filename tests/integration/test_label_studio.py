"""Label Studio as the oracle, against a real Label Studio server started by the test.

The server is ``label-studio==1.23.2`` from PyPI in its own cached virtualenv (see
``tests/label_studio_server.py``), on 127.0.0.1 with a generated token. A scripted annotator answers
through the REST API (``POST /api/tasks/{id}/annotations``), as a person in the labeling page would.
The tests skip only when Label Studio cannot be installed (no network to PyPI).

* ``test_oracle_round_trip_against_real_server``: the oracle alone (no Ray): project creation,
  tasks in rank order with hidden sample ids and predictions, skipped tasks under ``wait``, a bad
  round rejected with the run directory byte-identical, polling, and the server's own JSON,
  JSON_MIN, CSV and TSV exports of the reused project accepted by ``--labels``.
* ``test_two_runs_sharing_a_project_take_only_their_own_annotations``: two runs with the same
  ``loop.name`` in one project each push and read only their own tasks (the run id of
  ``state.json``); a task whose image was changed in Label Studio is refused, a deleted one named
  and pushed again.
* ``test_the_runs_project_through_127_0_0_1_and_localhost``: another spelling of the server's URL
  reaches the run's project (no second project, nothing pushed twice); a server without the run's
  project is an error naming both URLs; a wrong URL and a wrong token fail in one line before the
  data set is built (the real CLI).
* ``test_live_wait_prints_progress_and_survives_a_server_restart``: while the oracle waits it prints
  the project URL, what is left and its progress; the server restarted mid-wait is retried, not fatal.
* ``test_map_accuracy_sample_through_label_studio``: ``assess sample --label-studio`` imports the map
  sample blind and tagged; ``estimate --label-studio`` pulls anew each time, equals the file route.
* ``test_loop_two_rounds_through_label_studio`` (slow: several CLI runs of the loop): the real CLI,
  two batches labeled in Label Studio, a rejected bad round, the token nowhere in the run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError, LabelFileError
from hssal_ray.oracle import HumanOracle, LabelStudioOracle
from hssal_ray.oracle.factory import check_oracle
from hssal_ray.oracle.label_studio import (
    EXPORT_FILE,
    PROJECT_FILE,
    PUSH_FILE,
    RUN_ID_FIELD,
    LabelStudioError,
)
from hssal_ray.query.scores_io import write_scores
from hssal_ray.state import LabeledSet, RunState, new_run_id
from tests.integration.conftest import SMOKE, run_cli
from tests.label_studio_server import Server, ensure_installed, restart, start

pytestmark = pytest.mark.label_studio

CLASSES = ["airplane", "beach", "forest"]


@pytest.fixture(scope="module")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe, reason = ensure_installed()
    if exe is None:
        pytest.skip(f"Label Studio cannot be installed here: {reason}")
    server = start(exe, tmp_path_factory.mktemp("label_studio"))
    print(f"\n[label studio] started in {server.start_s:.1f} s at {server.url}")
    try:
        yield server
    finally:
        server.stop()


def _snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def _choice(name: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [name]}}]


def _annotate(server: Server, task_id: int, label: str | None) -> int:
    """Answer one task as an annotator would (``None``: press Skip)."""
    body = {"result": [], "was_cancelled": True} if label is None else {"result": _choice(label)}
    return int(server.api("POST", f"/api/tasks/{task_id}/annotations", body)["id"])


def _tasks(server: Server, project: int) -> list[dict[str, Any]]:
    return server.api("GET", f"/api/tasks?project={project}&fields=all&page_size=1000")["tasks"]


def _write_query(d: Path, ids: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{s},{i},0.5,0\n" for i, s in enumerate(ids, start=1))
    (d / "query.csv").write_text("sample_id,rank,u,coarse_cluster\n" + rows)


def _noise(sid: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    return rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # big data URIs: > csv's 128 KiB limit


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as the loop leaves it after the cold start's training and round 0's query."""
    run = tmp_path / "lsrun"
    pool = [f"{c}/{c}{i:02d}.jpg" for c in CLASSES for i in range(4)]
    _write_query(run / "cold_start", pool[0::4])  # airplane00, beach00, forest00
    _write_query(run / "round_000", [pool[5], pool[1], pool[10], pool[2]])
    probs = np.full((len(pool), 3), 0.1, dtype=np.float32)
    pred = np.array([(i + 1) % 3 for i in range(len(pool))])  # wrong on purpose: predictions != truth
    probs[np.arange(len(pool)), pred] = 0.8
    write_scores(
        str(run / "round_000" / "scores.parquet"),
        pool,
        embeddings=np.eye(len(pool), 4, dtype=np.float32),
        probs=probs,
        scores={"u_badge": np.linspace(0, 1, len(pool))},
        pred=pred,
        num_parts=2,
    )
    (run / "classes.json").write_text(json.dumps(CLASSES))
    RunState(config_sha="0" * 16, run_id=new_run_id()).save(str(run))
    return run


def _truth(sid: str) -> str:
    return sid.split("/", 1)[0]


def _ids(d: Path) -> list[str]:
    with open(d / "query.csv") as f:
        return [r["sample_id"] for r in csv.DictReader(f)]


def test_oracle_round_trip_against_real_server(
    ls_server: Server, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hssal_ray")
    t0 = time.monotonic()
    cold, r0 = run_dir / "cold_start", run_dir / "round_000"
    oracle = LabelStudioOracle(  # PNG noise: data URIs larger than csv's default 128 KiB field limit
        CLASSES,
        url=ls_server.url,
        token=ls_server.token,
        load_image=_noise,
        hide_sample_id=True,
        image_format="png",
    )
    assert ls_server.token not in repr(oracle)

    # --- cold start: the first collect creates the project and pushes the batch, no model yet
    ids0 = _ids(cold)
    assert oracle.collect(str(cold), ids0) is None
    pid = json.loads((run_dir / PROJECT_FILE).read_text())["project_id"]
    project = ls_server.api("GET", f"/api/projects/{pid}")
    assert "$ref" in project["label_config"] and "$sample_id" not in project["label_config"]
    tasks = _tasks(ls_server, pid)
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3]  # imported in query-rank order
    assert all("sample_id" not in t["data"] for t in tasks)  # annotators do not see the class folder
    assert not any(sid in json.dumps(t["data"]) for t in tasks for sid in ids0)
    assert all(t["predictions"] == [] for t in tasks)  # the cold start has no model
    assert [t["data"]["ref"] for t in tasks] == [f"lsrun:cold_start:{i}" for i in (1, 2, 3)]
    oracle.request(str(cold), ids0, {"round": 0})  # idempotent: nothing imported twice
    assert len(_tasks(ls_server, pid)) == 3

    by_ref = dict(zip([t["data"]["ref"] for t in tasks], ids0, strict=True))
    _annotate(ls_server, tasks[0]["id"], _truth(by_ref[tasks[0]["data"]["ref"]]))
    _annotate(ls_server, tasks[1]["id"], None)  # skipped
    _annotate(ls_server, tasks[2]["id"], _truth(by_ref[tasks[2]["data"]["ref"]]))
    assert oracle.collect(str(cold), ids0) is None  # oracle.partial=wait: a skipped task keeps it waiting
    assert "1 skipped" in oracle.instructions(str(cold)) and "oracle.partial=continue" in oracle.instructions(
        str(cold)
    )
    continuing = LabelStudioOracle(
        CLASSES, url=ls_server.url, token=ls_server.token, partial="continue", hide_sample_id=True
    )
    partial_answer = continuing.collect(str(cold), ids0)  # oracle.partial=continue: goes on without it
    assert partial_answer is not None and partial_answer.missing == [by_ref[tasks[1]["data"]["ref"]]]
    (cold / "labels.csv").unlink()
    (cold / EXPORT_FILE).unlink()
    _annotate(ls_server, tasks[1]["id"], _truth(by_ref[tasks[1]["data"]["ref"]]))  # un-skipped
    answer = oracle.collect(str(cold), ids0)
    assert answer is not None and answer.labels == {s: CLASSES.index(_truth(s)) for s in ids0}
    assert "image" not in json.loads((cold / EXPORT_FILE).read_text())[0]["data"]
    LabeledSet().with_round(0, answer.labels, "human").save(str(run_dir))

    # --- round 0: the model's predictions travel with the tasks
    ids1 = _ids(r0)
    oracle.request(str(r0), ids1, {"round": 0})
    assert oracle.collect(str(r0), ids1) is None
    push = json.loads((r0 / PUSH_FILE).read_text())
    tasks1 = [t for t in _tasks(ls_server, pid) if t["data"]["hssal_batch"] == "round_000"]
    assert [t["data"]["rank"] for t in tasks1] == [1, 2, 3, 4]
    assert sorted(push["tasks"].values()) == [t["id"] for t in tasks1]
    scores = pq.read_table(r0 / "scores.parquet").to_pylist()
    model = {r["sample_id"]: (CLASSES[r["pred"]], max(r["probs"])) for r in scores}
    for t, sid in zip(tasks1, ids1, strict=True):
        (p,) = t["predictions"]
        assert p["model_version"] == "hssal lsrun/round_000"
        assert p["result"][0]["value"]["choices"] == [model[sid][0]]
        assert p["score"] == pytest.approx(model[sid][1], abs=1e-5)

    # the reused project's own exports (both batches) are accepted as files, before any API pull
    good = {s: _truth(s) for s in ids1}
    ann_ids = {t["id"]: _annotate(ls_server, t["id"], good[s]) for t, s in zip(tasks1, ids1, strict=True)}
    for fmt in ("JSON", "JSON_MIN", "CSV", "TSV"):
        raw = ls_server.api("GET", f"/api/projects/{pid}/export?exportType={fmt}", raw=True)
        path = run_dir.parent / f"export.{fmt.lower().replace('_min', '.min')}"
        path.write_bytes(raw)
        if fmt in ("CSV", "TSV"):  # embedded images are larger than Python's default csv field limit
            assert max(len(x) for x in raw.decode().replace("\t", ",").split(",")) > 131072
        fresh = HumanOracle(CLASSES, hide_sample_id=True)
        got = fresh.import_labels(str(r0), ids1, str(path))
        assert got.labels == {s: CLASSES.index(v) for s, v in good.items()}, fmt
        assert sorted(got.already_labeled) == sorted(ids0), fmt  # earlier round, stored labels: reported
        (r0 / "labels.csv").unlink()

    # --- a bad round: an unknown class and two conflicting annotations; the run stays byte-identical
    first, second = tasks1[0]["id"], tasks1[1]["id"]
    ls_server.api("PATCH", f"/api/annotations/{ann_ids[first]}", {"result": _choice("not_a_class")})
    extra = _annotate(ls_server, second, "forest" if good[ids1[1]] != "forest" else "beach")
    before = _snapshot(run_dir)
    with pytest.raises(LabelFileError) as info:
        oracle.collect(str(r0), ids1)
    msg = str(info.value)
    assert "Label Studio API" in msg and "nothing was changed" in msg
    assert "'not_a_class'" in msg and "conflicting answers" in msg and ids1[1] in msg
    assert _snapshot(run_dir) == before

    # --- fixed in Label Studio, one task still to do: the loop polls and takes the answer once complete
    ls_server.api("PATCH", f"/api/annotations/{ann_ids[first]}", {"result": _choice(good[ids1[0]])})
    ls_server.api("DELETE", f"/api/annotations/{extra}")
    last = tasks1[-1]["id"]
    ls_server.api("DELETE", f"/api/annotations/{ann_ids[last]}")
    fix = threading.Timer(2.0, lambda: _annotate(ls_server, last, good[ids1[-1]]))
    waiting = LabelStudioOracle(
        CLASSES, url=ls_server.url, token=ls_server.token, hide_sample_id=True, wait_s=60, poll_s=0.5
    )
    t_wait = time.monotonic()
    fix.start()
    answer1 = waiting.collect(str(r0), ids1)
    fix.join()
    assert answer1 is not None and time.monotonic() - t_wait < 30
    assert answer1.labels == {s: CLASSES.index(v) for s, v in good.items()}
    assert waiting.collect(str(r0), ids1) == answer1  # from labels.csv now

    # an existing project (oracle.project_id) is checked against the run's classes; a bad token is named
    same = LabelStudioOracle(
        CLASSES, url=ls_server.url, token=ls_server.token, project_id=pid, hide_sample_id=True
    )
    assert same._project(str(run_dir)) == pid
    other = ls_server.api(
        "POST",
        "/api/projects",
        {"title": "someone else's", "label_config": project["label_config"].replace("forest", "lake")},
    )
    with pytest.raises(
        ConfigError,
        match=r"does not fit this run: its choices differ .*extra \['lake'\], absent \['forest'\]",
    ):
        LabelStudioOracle(CLASSES, url=ls_server.url, token=ls_server.token, project_id=other["id"])._project(
            str(run_dir)
        )
    wrong = "0" * 40
    with pytest.raises(LabelStudioError, match=r"HTTP 401.*API token from \$LABEL_STUDIO_API_KEY") as info:
        LabelStudioOracle(CLASSES, url=ls_server.url, token=wrong, project_id=pid)._project(str(run_dir))
    assert wrong not in str(info.value)

    # the token is nowhere: not in the run directory, not in the logs
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert ls_server.token.encode() not in p.read_bytes(), p
    assert ls_server.token not in caplog.text
    print(f"[label studio] oracle round trip: {time.monotonic() - t0:.1f} s")


def _cold_run(parent: Path, ids: list[str], name: str = "lsrun") -> Path:
    """A run directory (``state.json`` with a fresh run id) whose cold start queried ``ids``."""
    run = parent / name
    _write_query(run / "cold_start", ids)
    (run / "classes.json").write_text(json.dumps(CLASSES))
    RunState(config_sha="0" * 16, run_id=new_run_id()).save(str(run))
    return run


def _record(run: Path, batch: str = "cold_start") -> dict[str, Any]:
    return json.loads((run / batch / PUSH_FILE).read_text())


def _answer(server: Server, run: Path, skip: tuple[str, ...] = ()) -> None:
    """Label every task the run pushed for its cold start (but ``skip`` refs) with the true class."""
    push = _record(run)
    for ref, tid in push["tasks"].items():
        if ref not in skip:
            _annotate(server, tid, _truth(push["samples"][ref]))


def test_two_runs_sharing_a_project_take_only_their_own_annotations(
    ls_server: Server, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    ids_a = [f"{c}/{c}00.jpg" for c in CLASSES]
    ids_b = [f"{c}/{c}01.jpg" for c in reversed(CLASSES)]
    first, second = _cold_run(tmp_path / "a", ids_a), _cold_run(tmp_path / "b", ids_b)
    # hidden sample ids (the default on folder data): tasks show refs, the same in both runs
    a = LabelStudioOracle(
        CLASSES, url=ls_server.url, token=ls_server.token, load_image=_noise, hide_sample_id=True
    )
    assert a.collect(str(first / "cold_start"), ids_a) is None
    _answer(ls_server, first)
    answer_a = a.collect(str(first / "cold_start"), ids_a)
    assert answer_a is not None and answer_a.labels == {s: CLASSES.index(_truth(s)) for s in ids_a}
    pid = json.loads((first / PROJECT_FILE).read_text())["project_id"]

    # the same loop.name, another directory and seed, the first run's project (oracle.project_id)
    lines: list[str] = []
    b = LabelStudioOracle(
        CLASSES,
        url=ls_server.url,
        token=ls_server.token,
        project_id=pid,
        load_image=_noise,
        progress=lines.append,
        hide_sample_id=True,
    )
    cold_b = str(second / "cold_start")
    assert b.collect(cold_b, ids_b) is None  # its own tasks, unanswered: it waits
    tasks = _tasks(ls_server, pid)
    assert len(tasks) == 6 and all(t["data"]["hssal_run"] == "lsrun" for t in tasks)  # same name, same refs
    run_b = RunState.load(str(second)).run_id  # type: ignore[union-attr]
    mine = [t for t in tasks if t["data"][RUN_ID_FIELD] == run_b]
    push = _record(second)
    assert sorted(t["id"] for t in mine) == sorted(push["tasks"].values())
    assert sorted(push["samples"].values()) == sorted(ids_b)
    assert all(t["annotations"] == [] for t in mine) and all("sample_id" not in t["data"] for t in mine)

    # a task pointed at another image in Label Studio: its annotation is refused, nothing written
    changed = push["tasks"]["lsrun:cold_start:2"]
    data = next(t for t in mine if t["id"] == changed)["data"]
    other_image = next(t for t in tasks if t["data"][RUN_ID_FIELD] != run_b)["data"]["image"]
    ls_server.api("PATCH", f"/api/tasks/{changed}", {"data": {**data, "image": other_image}})
    _answer(ls_server, second)
    before = _snapshot(second)
    with pytest.raises(LabelFileError, match=rf"task {changed} \(another image than the one pushed\)"):
        b.collect(cold_b, ids_b)
    assert _snapshot(second) == before

    # deleted in Label Studio: named, pushed again (oracle.partial=wait), labeled, taken
    ls_server.api("DELETE", f"/api/tasks/{changed}")
    assert b.collect(cold_b, ids_b) is None
    sid = push["samples"]["lsrun:cold_start:2"]
    assert any("1 task(s) were deleted" in line and repr(sid) in line for line in lines)
    again = _record(second)["tasks"]["lsrun:cold_start:2"]
    assert again != changed
    _annotate(ls_server, again, _truth(sid))
    answer_b = b.collect(cold_b, ids_b)
    assert answer_b is not None and answer_b.labels == {s: CLASSES.index(_truth(s)) for s in ids_b}
    print(f"[label studio] two runs, one project: {time.monotonic() - t0:.1f} s")


def test_the_runs_project_through_127_0_0_1_and_localhost(
    ls_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    ids = [f"{c}/{c}02.jpg" for c in CLASSES]
    run = _cold_run(tmp_path, ids)
    cold = str(run / "cold_start")
    assert ls_server.url.startswith("http://127.0.0.1:")
    LabelStudioOracle(CLASSES, url=ls_server.url, token=ls_server.token).request(cold, ids)
    record = json.loads((run / PROJECT_FILE).read_text())
    projects = ls_server.api("GET", "/api/projects?page_size=1000")["count"]
    localhost = ls_server.url.replace("127.0.0.1", "localhost")
    for url in (localhost, localhost + "/", ls_server.url + "/"):
        assert LabelStudioOracle(CLASSES, url=url, token=ls_server.token).collect(cold, ids) is None
    assert ls_server.api("GET", "/api/projects?page_size=1000")["count"] == projects  # no new project
    assert len(_tasks(ls_server, record["project_id"])) == 3  # nothing pushed twice
    _answer(ls_server, run)
    answer = LabelStudioOracle(CLASSES, url=localhost, token=ls_server.token).collect(cold, ids)
    assert answer is not None and answer.labels == {s: CLASSES.index(_truth(s)) for s in ids}
    assert json.loads((run / PROJECT_FILE).read_text()) == record

    # a record of another server: what this server has under that id is not the run's project
    other = _cold_run(tmp_path / "other", ids)
    foreign = ls_server.api(
        "POST", "/api/projects", {"title": "hssal lsrun", "label_config": HumanOracle(CLASSES).label_config()}
    )
    elsewhere = "http://labelstudio.example:8080"
    for pid, found in ((foreign["id"], "is not this run's"), (987654, "it has no project 987654")):
        rec = {"url": elsewhere, "project_id": pid, "title": "hssal lsrun"}
        (other / PROJECT_FILE).write_text(json.dumps({**rec, "run_id": RunState.load(str(other)).run_id}))
        with pytest.raises(ConfigError) as info:
            LabelStudioOracle(CLASSES, url=ls_server.url, token=ls_server.token).collect(
                str(other / "cold_start"), ids
            )
        msg = str(info.value)
        assert f"at {elsewhere}, but oracle.url={ls_server.url} is another server" in msg and found in msg
        assert f"Resume with oracle.url={elsewhere}" in msg
    assert _tasks(ls_server, foreign["id"]) == []

    # a wrong URL and a wrong token: one line each, in a second, before any data set is built
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    wrong_url = ls_server.url + "/wrong-prefix"
    with pytest.raises(LabelStudioError) as info:
        check_oracle(load_config(None, ["oracle.kind=label_studio", f"oracle.url={wrong_url}"]).oracle)
    msg = str(info.value)
    assert f"is oracle.url={wrong_url} a Label Studio server?" in msg and "<" not in msg and "\n" not in msg
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    t_cli = time.monotonic()
    proc = run_cli(*SMOKE, "oracle.kind=label_studio", f"oracle.url={localhost}", f"loop.run_dir={tmp_path}",
                   "loop.name=badtoken", check=False)  # fmt: skip
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr and "$LABEL_STUDIO_API_KEY" in proc.stderr
    assert not (tmp_path / "badtoken" / "manifest.parquet").exists()
    print(
        f"[label studio] URL spellings: {time.monotonic() - t0:.1f} s "
        f"(CLI refusing the token: {time.monotonic() - t_cli:.1f} s)"
    )


def test_live_wait_prints_progress_and_survives_a_server_restart(ls_server: Server, tmp_path: Path) -> None:
    t0 = time.monotonic()
    ids = [f"{c}/{c}03.jpg" for c in CLASSES]
    run = _cold_run(tmp_path, ids)
    cold = str(run / "cold_start")
    LabelStudioOracle(CLASSES, url=ls_server.url, token=ls_server.token).request(cold, ids)
    _answer(ls_server, run, skip=("lsrun:cold_start:2", "lsrun:cold_start:3"))
    lines: list[str] = []
    oracle = LabelStudioOracle(
        CLASSES,
        url=ls_server.url,
        token=ls_server.token,
        wait_s=300,
        poll_s=0.5,
        progress=lines.append,
        progress_every_s=2,
    )
    restarted: list[float] = []

    def person() -> None:  # the server restarts during the wait; afterwards the person labels the rest
        deadline = time.monotonic() + 120
        while not any("labeled in Label Studio" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the first progress line
        restart(ls_server)
        restarted.append(ls_server.start_s)
        push = _record(run)
        for ref in ("lsrun:cold_start:2", "lsrun:cold_start:3"):
            _annotate(ls_server, push["tasks"][ref], _truth(push["samples"][ref]))

    worker = threading.Thread(target=person)
    worker.start()
    try:
        answer = oracle.collect(cold, ids)
    finally:
        worker.join()
    assert answer is not None and answer.labels == {s: CLASSES.index(_truth(s)) for s in ids}
    pid = json.loads((run / PROJECT_FILE).read_text())["project_id"]
    assert lines[0].startswith("[hssal] cold start: 2 of 3 samples to label in Label Studio (1 labeled")
    assert f"{ls_server.url}/projects/{pid}/data" in lines[0] and "--resume" in lines[0]
    assert any("1 of 3 labeled in Label Studio, 0 skipped, 2 to do (waited" in line for line in lines)
    retries = [line for line in lines if "Trying again in" in line]
    assert retries and all("\n" not in line for line in retries)
    print(
        f"[label studio] live wait across a restart ({restarted[0]:.1f} s): {time.monotonic() - t0:.1f} s, "
        f"{len(retries)} retries"
    )


def _run_truth(run: Path) -> dict[str, str]:
    t = pq.read_table(run / "manifest.parquet")
    return dict(zip(t["sample_id"].to_pylist(), t["class_name"].to_pylist(), strict=True))


def _batch_tasks(server: Server, run: Path, batch: str) -> list[dict[str, Any]]:
    pid = json.loads((run / PROJECT_FILE).read_text())["project_id"]
    tasks = [t for t in _tasks(server, pid) if t["data"]["hssal_batch"] == batch]
    return sorted(tasks, key=lambda t: t["data"]["rank"])


@pytest.mark.slow  # ~4-5 min on 2 busy cores: five CLI runs of the loop (Ray start, train, score each)
@pytest.mark.ray
def test_loop_two_rounds_through_label_studio(
    ls_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    run = tmp_path / "lsloop"
    outputs: list[str] = []

    def cli(*args: str, check: bool = True) -> Any:
        proc = run_cli(*args, check=check)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    cli(*SMOKE, "oracle.kind=label_studio", f"oracle.url={ls_server.url}", "loop.rounds=1",
        f"loop.run_dir={tmp_path}", "loop.name=lsloop")  # fmt: skip
    state = json.loads((run / "state.json").read_text())
    assert (state["status"], state["stage"]) == ("awaiting_labels", "init")
    truth = _run_truth(run)
    answers: dict[str, str] = {}

    def answer_batch(batch: str, bad: str | None = None) -> dict[int, int]:
        ids = _ids(run / batch)
        tasks = _batch_tasks(ls_server, run, batch)
        assert len(tasks) == len(ids) and all("sample_id" not in t["data"] for t in tasks)  # hidden: auto
        done = {}
        for t in tasks:
            sid = ids[t["data"]["rank"] - 1]
            answers[sid] = truth[sid]
            label = bad if (bad and t is tasks[0]) else truth[sid]
            done[t["id"]] = _annotate(ls_server, t["id"], label)
        return done

    # cold start: pushed without predictions, answered in Label Studio, pulled by --resume
    assert all(t["predictions"] == [] for t in _batch_tasks(ls_server, run, "cold_start"))
    answer_batch("cold_start")
    cli("--resume", str(run))
    state = json.loads((run / "state.json").read_text())
    assert (state["status"], state["stage"], state["round"]) == ("awaiting_labels", "label", 0)

    # round 0: every task carries the model's prediction (the round's scores.parquet)
    classes = json.loads((run / "classes.json").read_text())
    scores = {r["sample_id"]: r for r in pq.read_table(run / "round_000" / "scores.parquet").to_pylist()}
    ids1 = _ids(run / "round_000")
    tasks1 = _batch_tasks(ls_server, run, "round_000")
    for t, sid in zip(tasks1, ids1, strict=True):
        (p,) = t["predictions"]
        assert p["model_version"] == "hssal lsloop/round_000"
        assert p["result"][0]["value"]["choices"] == [classes[scores[sid]["pred"]]]
        assert p["score"] == pytest.approx(scores[sid]["probs"][scores[sid]["pred"]], abs=1e-5)

    # a bad round: rejected, the run directory byte-identical
    ann = answer_batch("round_000", bad="not_a_class")
    before = _snapshot(run)
    proc = cli("--resume", str(run), check=False)
    assert proc.returncode == 2 and "'not_a_class'" in proc.stderr and "nothing was changed" in proc.stderr
    assert _snapshot(run) == before

    # fixed in Label Studio while the loop polls (oracle.wait_s): it picks the answer up and finishes
    first, last = tasks1[0]["id"], tasks1[-1]["id"]
    ls_server.api("PATCH", f"/api/annotations/{ann[first]}", {"result": _choice(answers[ids1[0]])})
    ls_server.api("DELETE", f"/api/annotations/{ann[last]}")
    later = threading.Timer(20.0, lambda: _annotate(ls_server, last, answers[ids1[-1]]))
    later.start()
    try:
        cli("--resume", str(run), "oracle.wait_s=300", "oracle.poll_s=1")
    finally:
        later.cancel()
    assert json.loads((run / "state.json").read_text())["status"] == "done"
    lab = pq.read_table(run / "labeled.parquet").to_pylist()
    assert {r["sample_id"]: classes[r["label"]] for r in lab} == answers  # exactly the scripted answers
    assert {r["source"] for r in lab} == {"human"} and sorted({r["round_added"] for r in lab}) == [0, 1]

    # the token: only in the environment
    config = (run / "config.yaml").read_text()
    assert "token_env: LABEL_STUDIO_API_KEY" in config
    for p in run.rglob("*"):
        if p.is_file():
            assert ls_server.token.encode() not in p.read_bytes(), p
    assert not any(ls_server.token in out for out in outputs)
    print(f"[label studio] loop, two rounds: {time.monotonic() - t0:.1f} s")


def test_map_accuracy_sample_through_label_studio(
    ls_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``assess sample --label-studio`` imports the sample blind (no map class, no pre-annotation, no
    sample id that names a class folder), tagged with the assessment's id; ``estimate --label-studio``
    pulls the annotations anew each time (a person may go on labeling after a partial estimate) and
    gives the figures a label file gives; the token is read from the environment, written nowhere."""
    from hssal_ray.assess import workflow
    from hssal_ray.assess.__main__ import main
    from hssal_ray.errors import StateError
    from tests.unit.assess.test_workflow import _prediction

    pred, truth = _prediction(tmp_path, n=300)
    out = tmp_path / "assess"
    monkeypatch.setenv("LS_TOKEN_FOR_ASSESS", ls_server.token)
    monkeypatch.setattr(workflow, "image_loader", lambda info, progress: _noise)  # the archive's chips
    argv = ["sample", str(pred), "--out", str(out), "--n", "30", "--min-per-class", "5"]
    ls = ["--label-studio", ls_server.url, "--token-env", "LS_TOKEN_FOR_ASSESS"]
    assert main([*argv, "--no-images", *ls]) == 2  # tasks without images: refused, nothing drawn
    assert "need the chips' images" in capsys.readouterr().err and not out.exists()
    assert main([*argv, *ls]) == 0
    assert "in Label Studio: " in capsys.readouterr().out
    design = json.loads((out / "design.json").read_text())
    pid = design["label_studio"]["project"]
    tasks = _tasks(ls_server, pid)
    sample = {r["ref"]: r for r in pq.read_table(out / "sample.parquet").to_pylist()}
    assert len(tasks) == 30 and {t["data"]["ref"] for t in tasks} == set(sample)
    assert all(t["predictions"] == [] for t in tasks)  # blind: no pre-annotation
    assert all(t["data"][RUN_ID_FIELD] == design["assessment_id"] for t in tasks)
    blob = json.dumps([t["data"] for t in tasks])
    assert not any(r["sample_id"] in blob for r in sample.values())  # ids name class folders: hidden
    assert main([*argv, *ls]) == 0 and len(_tasks(ls_server, pid)) == 30  # again: nothing imported twice
    capsys.readouterr()

    def label(task: dict[str, Any]) -> None:
        _annotate(ls_server, task["id"], truth[sample[task["data"]["ref"]]["sample_id"]])

    for t in tasks[:-1]:
        label(t)
    estimate = ["estimate", str(out), "--label-studio"]
    assert main(estimate) == 2  # one task left: --partial wait refuses, nothing written
    assert "not labeled yet in Label Studio (sample: 29 of 30 tasks labeled" in capsys.readouterr().err
    assert not (out / "assessment.json").exists()
    assert main([*estimate, "--partial", "continue"]) == 0
    partial = json.loads((out / "assessment.json").read_text())
    assert partial["labeled"] == 29 and partial["labels"] == f"Label Studio project {pid} at {ls_server.url}"
    label(tasks[-1])  # the person goes on: the next estimate pulls again, not the stored labels.csv
    assert main(estimate) == 0
    full = json.loads((out / "assessment.json").read_text())
    assert full["labeled"] == 30
    labels = tmp_path / "labels.csv"
    labels.write_text("ref,label\n" + "".join(f"{r},{truth[x['sample_id']]}\n" for r, x in sample.items()))
    by_file = workflow.estimate_accuracy(str(out), str(labels))
    assert by_file["overall_accuracy"] == full["overall_accuracy"]
    assert by_file["per_class"] == full["per_class"]
    assert ls_server.token not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    # ten more chips: the extension goes to the same project as a new batch; the estimate pulls both
    assert (
        main(["sample", str(pred), "--out", str(out), "--n", "40", "--min-per-class", "5", "--extend"]) == 0
    )
    capsys.readouterr()
    sample.update({r["ref"]: r for r in pq.read_table(out / "sample.parquet").to_pylist()})
    new = [t for t in _tasks(ls_server, pid) if t["data"]["hssal_batch"] == "sample_2"]
    assert len(new) == 10 and len(_tasks(ls_server, pid)) == 40 and all(t["predictions"] == [] for t in new)
    assert main(estimate) == 2 and "sample_2: 0 of 10 tasks labeled" in capsys.readouterr().err
    for t in new:
        label(t)
    assert main(estimate) == 0
    assert json.loads((out / "assessment.json").read_text())["labeled"] == 40
    monkeypatch.delenv("LS_TOKEN_FOR_ASSESS")
    assert main(estimate) == 2 and "LS_TOKEN_FOR_ASSESS is empty" in capsys.readouterr().err
    # a sample handed over by file has no project to pull from
    other = tmp_path / "by_file"
    assert main(["sample", str(pred), "--out", str(other), "--n", "30", "--min-per-class", "5"]) == 0
    with pytest.raises(StateError, match="was not imported into Label Studio"):
        workflow.estimate_accuracy(str(other), None)
