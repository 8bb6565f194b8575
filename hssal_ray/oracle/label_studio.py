"""Label Studio as a live oracle: push each query batch through the REST API, pull the annotations back.

``request`` (and the first ``collect`` of a batch) makes sure the run has a project (the one in
``oracle.project_id``, or one created on first use with a label config from the run's classes and
recorded in ``RUN/label_studio.json``), writes the same hand-off files as the file oracle, and
imports the batch as tasks: one per queried sample, in query-rank order, tagged with the run and the
batch (``data.hssal_run``, ``data.hssal_batch``, ``data.ref``), carrying the model's prediction as a
pre-annotation (``predictions`` with ``model_version`` and ``score``; the cold start has none).
Pushing is idempotent: tasks already in the project are not imported twice.

``collect`` pulls the batch's tasks with their annotations (polling every ``poll_s`` seconds for up to
``wait_s``) and validates them exactly like a file import (:func:`~hssal_ray.oracle.labels.parse_label_rows`):
any invalid answer (unknown class, conflicting annotations, ...) raises
:class:`~hssal_ray.errors.LabelFileError` and nothing is written. Skipped, cancelled and missing
tasks follow ``partial``: ``wait`` waits for them (the run exits ``awaiting_labels`` when ``wait_s``
runs out), ``continue`` goes on with the labels given once every task was seen or the wait is over.
A valid answer is stored as ``labels.csv`` (plus the pulled annotations, without images, in
``label_studio_export.json``); from then on ``collect`` reads that file, like the file oracle.

The API token comes from an environment variable (``oracle.token_env``); it is never written to the
run directory, to the config or to logs.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hssal_ray import _io
from hssal_ray.errors import ConfigError
from hssal_ray.oracle._handoff import _basename, _parent, partial_hint, run_history
from hssal_ray.oracle._label_studio import rows_from_label_studio
from hssal_ray.oracle._ls_client import LabelStudioClient, LabelStudioError
from hssal_ray.oracle.base import LABELS_FILE, OracleAnswer, PartialPolicy
from hssal_ray.oracle.human import INSTRUCTIONS_FILE, LABEL_CONFIG_FILE, TASKS_FILE, HumanOracle
from hssal_ray.oracle.labels import PARTIAL_OVERRIDE, parse_label_rows, write_labels_csv

__all__ = ["LabelStudioOracle", "LabelStudioError", "PROJECT_FILE", "PUSH_FILE", "EXPORT_FILE"]

logger = logging.getLogger(__name__)

PROJECT_FILE = "label_studio.json"
"""In the run directory: ``{"url", "project_id", "title"}`` of the project the run created."""
PUSH_FILE = "label_studio_push.json"
"""In a round directory: ``{"url", "project_id", "tasks": {ref: task id}}`` of the pushed batch."""
EXPORT_FILE = "label_studio_export.json"
"""In a round directory: the pulled tasks and annotations that were accepted (images left out)."""


class LabelStudioOracle(HumanOracle):
    """Hands each query batch to a Label Studio server and pulls the validated annotations back.

    Args:
        class_names: Class names, index = class id (``classes.json``).
        url: The server's base URL (``oracle.url``).
        token: The API token (read from ``oracle.token_env`` by the caller; kept in memory only).
        token_env: The environment variable the token came from, for messages.
        project_id: Use this existing project instead of creating one per run.
        wait_s: How long ``collect`` polls for the annotations before the run exits
            ``awaiting_labels`` (0: look once).
        poll_s: Seconds between two polls.
        sleep: Sleep function (tests pass a fake clock's).
        clock: Monotonic clock.
        **kwargs: :class:`HumanOracle` parameters (``load_image``, ``partial``, ``image_size``,
            ``image_format``, ``hide_sample_id``, ...).
    """

    pulls_labels: ClassVar[bool] = True

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        url: str,
        token: str,
        token_env: str = "LABEL_STUDIO_API_KEY",
        project_id: int | None = None,
        wait_s: float = 0.0,
        poll_s: float = 10.0,
        load_image: Callable[[str], np.ndarray] | None = None,
        partial: PartialPolicy = "wait",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        """Store the parameters (see the class docstring)."""
        super().__init__(class_names, load_image=load_image, partial=partial, **kwargs)
        if not token:
            raise ValueError(f"no Label Studio API token (environment variable {token_env} is empty)")
        if wait_s < 0 or poll_s <= 0:
            raise ValueError(f"wait_s must be >= 0 and poll_s > 0, got {wait_s} and {poll_s}")
        self.client = LabelStudioClient(url, token, token_env)
        self.token_env = token_env
        self.project_id = project_id
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self._sleep = sleep
        self._clock = clock
        self._status: dict[str, str] = {}

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.client.url

    # ------------------------------------------------------------------ protocol
    def request(self, round_dir: str, ids: Sequence[str], context: Mapping[str, Any] | None = None) -> None:
        """Write the hand-off files and import the batch into the project (idempotent).

        Raises:
            LabelStudioError: The server cannot be reached or refuses the token or the import.
            ConfigError: ``oracle.project_id`` names a project whose label config does not fit.
        """
        ctx = dict(context or {})
        run_dir = str(ctx.get("run_dir") or _parent(round_dir))
        ctx["run_dir"] = run_dir
        pid = self._project(run_dir)
        super().request(round_dir, ids, ctx)
        self._push(round_dir, run_dir, pid)

    def collect(self, round_dir: str, ids: Sequence[str]) -> OracleAnswer | None:
        """The validated answer, pulled from Label Studio (polling up to ``wait_s``), or ``None``.

        Raises:
            LabelFileError: An annotation is invalid; nothing was written (the run is unchanged).
            LabelStudioError: The server cannot be reached.
        """
        if _io.exists(_io.join(round_dir, LABELS_FILE)):
            return super().collect(round_dir, ids)
        if not self._pushed(round_dir):
            self.request(round_dir, ids, None)
        deadline = self._clock() + self.wait_s
        if self.wait_s > 0:
            logger.info("waiting up to %.0f s for the annotations of %s", self.wait_s, round_dir)
        while True:
            final = self._clock() >= deadline
            answer = self._pull(round_dir, ids, final=final)
            if answer is not None or final:
                return answer
            self._sleep(max(min(self.poll_s, deadline - self._clock()), 0.0))

    def instructions(self, round_dir: str) -> str:
        """``INSTRUCTIONS.txt`` plus what the last pull found."""
        text = _io.read_text(_io.join(round_dir, INSTRUCTIONS_FILE))
        status = self._status.get(round_dir)
        return f"{text}\nLast look at Label Studio: {status}\n" if status else text

    # ------------------------------------------------------------------ project
    def _project(self, run_dir: str) -> int:
        if self.project_id is not None:
            project = self.client.get_project(self.project_id)
            self._check_project(project, f"oracle.project_id={self.project_id}")
            return int(self.project_id)
        path = _io.join(run_dir, PROJECT_FILE)
        if _io.exists(path):
            doc = _io.read_json(path)
            if doc.get("url") == self.url and isinstance(doc.get("project_id"), int):
                return int(doc["project_id"])
            logger.warning("%s is for %s, not %s: creating a new project", path, doc.get("url"), self.url)
        self.client.whoami()
        title = f"hssal {_basename(run_dir)}"[:50]
        project = self.client.create_project(
            title,
            self.label_config(),
            description=f"Active-learning queries of the hssal_ray run {run_dir}, one batch per round.",
        )
        pid = int(project["id"])
        _io.atomic_write_json(path, {"url": self.url, "project_id": pid, "title": title})
        logger.info("created Label Studio project %d (%r) at %s", pid, title, self.url)
        return pid

    def _check_project(self, project: Mapping[str, Any], where: str) -> None:
        config = str(project.get("label_config") or "")
        problems = []
        try:
            root = ET.fromstring(config)
        except ET.ParseError as e:
            raise ConfigError(f"{where}: the project's label config is not XML ({e})") from None
        choices = [
            c.get("value") or c.get("alias") or ""
            for el in root.iter("Choices")
            if el.get("name") == "label"
            for c in el.iter("Choice")
        ]
        if not choices:
            problems.append('it has no <Choices name="label">')
        elif sorted(choices) != sorted(self.class_names):
            extra = sorted(set(choices) - set(self.class_names))
            absent = sorted(set(self.class_names) - set(choices))
            problems.append(f"its choices differ from the run's classes (extra {extra}, absent {absent})")
        if "$image" not in config:
            problems.append("it shows no $image")
        if self.hide_sample_id and "$sample_id" in config:
            problems.append(
                "it shows $sample_id, which this run hides from annotators (oracle.hide_sample_id)"
            )
        if problems:
            raise ConfigError(
                f"{where}: Label Studio project {project.get('id')} does not fit this run: "
                + "; ".join(problems)
                + f". Set its labeling config to the run's {LABEL_CONFIG_FILE} (written into each round's "
                "directory), or leave oracle.project_id unset to have the run create its own project."
            )

    # ------------------------------------------------------------------ push / pull
    def _pushed(self, round_dir: str) -> bool:
        path = _io.join(round_dir, PUSH_FILE)
        if not _io.exists(path):
            return False
        doc = _io.read_json(path)
        return doc.get("url") == self.url and (
            self.project_id is None or doc.get("project_id") == self.project_id
        )

    def _push(self, round_dir: str, run_dir: str, pid: int) -> None:
        if self._pushed(round_dir):
            return
        tasks = _io.read_json(_io.join(round_dir, TASKS_FILE))
        run_name, batch = _basename(run_dir), _basename(round_dir)
        have = {
            str(t["data"].get("ref")): int(t["id"])
            for t in self.client.tasks(pid, {"hssal_run": run_name, "hssal_batch": batch})
        }
        new = [{k: v for k, v in t.items() if k != "id"} for t in tasks if t["data"]["ref"] not in have]
        new_ids = self.client.import_tasks(pid, new) if new else []
        mapping = {**have, **{t["data"]["ref"]: i for t, i in zip(new, new_ids, strict=True)}}
        doc = {"url": self.url, "project_id": pid, "tasks": mapping}
        _io.atomic_write_json(_io.join(round_dir, PUSH_FILE), doc)
        n_pred = sum(1 for t in new if t.get("predictions"))
        logger.info(
            "pushed %d tasks of %s to Label Studio project %d (%d with predictions; %d were there already)",
            len(new),
            batch,
            pid,
            n_pred,
            len(have),
        )

    def _pull(self, round_dir: str, ids: Sequence[str], *, final: bool) -> OracleAnswer | None:
        push = _io.read_json(_io.join(round_dir, PUSH_FILE))
        pid = int(push["project_id"])
        run_dir = _parent(round_dir)
        run_name, batch = _basename(run_dir), _basename(round_dir)
        tasks = self.client.tasks(pid, {"hssal_run": run_name, "hssal_batch": batch})
        rows, shape_problems, _ = rows_from_label_studio(tasks)
        rows = rows or []
        n = len(dict.fromkeys(ids))
        answered = sum(1 for r in rows if (r.status == "answered" and r.label) or r.status == "conflict")
        skipped = sum(1 for r in rows if r.status == "skipped")
        pending = n - answered - skipped
        where = f"{self.url}/projects/{pid}"
        self._status[round_dir] = (
            f"{answered} of {n} tasks labeled, {skipped} skipped, {max(pending, 0)} to do ({where})"
        )
        if skipped and self.partial == "wait":
            self._status[round_dir] += (
                f"; skipped tasks need a label under oracle.partial=wait, or resume with {PARTIAL_OVERRIDE}"
            )
        if not answered and not shape_problems:
            return None
        refs, earlier = run_history(run_dir, batch)
        answer = parse_label_rows(
            rows,
            source=f"Label Studio project {pid} at {self.url} (tasks of {run_name}:{batch})",
            fmt="Label Studio API",
            query_ids=ids,
            class_names=self.class_names,
            partial="continue",  # hard problems only; gaps are decided below
            shape_problems=shape_problems,
            refs=refs,
            earlier=earlier,
            partial_hint=partial_hint(run_dir, None),
        )
        complete = not answer.missing
        if not (complete or (self.partial == "continue" and (final or pending <= 0))):
            return None
        self._store(round_dir, ids, answer, tasks)
        return answer

    def _store(self, round_dir: str, ids: Sequence[str], answer: OracleAnswer, tasks: list[Any]) -> None:
        record = [
            {
                "id": t.get("id"),
                "data": {k: v for k, v in (t.get("data") or {}).items() if k != "image"},
                "annotations": t.get("annotations", []),
                "predictions": t.get("predictions", []),
            }
            for t in tasks
        ]
        _io.atomic_write_json(_io.join(round_dir, EXPORT_FILE), record)
        write_labels_csv(_io.join(round_dir, LABELS_FILE), answer.labels, self.class_names, order=list(ids))
        logger.info(
            "pulled %d labels of %s from Label Studio (%d unanswered)",
            answer.num_answered,
            round_dir,
            len(answer.missing),
        )

    # ------------------------------------------------------------------ text
    def _instructions(self, round_dir: str, run_dir: str, round_name: str, n: int) -> str:
        pid = self.project_id
        path = _io.join(run_dir, PROJECT_FILE)
        if pid is None and _io.exists(path):
            pid = _io.read_json(path).get("project_id")
        where = f"{self.url}/projects/{pid}/data" if pid is not None else self.url
        gaps = (
            "Every task needs a label (oracle.partial=wait): skipped tasks keep the round waiting."
            if self.partial == "wait"
            else "Skipped and unlabeled tasks are left out (oracle.partial=continue)."
        )
        poll = (
            f"The loop polls every {self.poll_s:g} s for up to {self.wait_s:g} s (oracle.wait_s), then exits."
            if self.wait_s > 0
            else "Add oracle.wait_s=SECONDS to the command to have it wait and poll."
        )
        return (
            f"The active-learning run {run_dir} is waiting for labels ({round_name}, {n} samples).\n\n"
            f"1. Label them in Label Studio: {where}\n"
            f"   (tasks of batch {_basename(round_dir)}, data.hssal_run={_basename(run_dir)},"
            " ordered by query rank;\n"
            "   from round 0 on each task carries the model's prediction as a pre-annotation).\n"
            f"   {gaps}\n"
            "   Several annotations of one task count once when they agree; conflicts are rejected.\n\n"
            f"2. Resume the run; it pulls the annotations through the API (token from ${self.token_env}):\n\n"
            f"   {self.resume_command(run_dir, None)}\n\n"
            f"   {poll}\n"
            "   Invalid annotations are rejected, naming the tasks; the run is left unchanged.\n"
            f"   To go on with a partial answer, add {PARTIAL_OVERRIDE} (it is then saved in the run's\n"
            "   config.yaml and applies to the later rounds too).\n"
            f"   An export file works as well: --labels FILE (JSON, JSON_MIN, CSV or TSV).\n\n"
            f"Classes: {', '.join(self.class_names)}\n"
        )

    def _repr_params(self) -> dict[str, Any]:
        return {**super()._repr_params(), "url": self.url, "project_id": self.project_id}
