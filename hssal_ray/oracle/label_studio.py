"""Label Studio as a live oracle: push each query batch through the REST API, pull the annotations back.

``request`` (and the first ``collect`` of a batch) makes sure the run has a project (the one in
``oracle.project_id``, or one created on first use with a label config from the run's classes and
recorded in ``RUN/label_studio.json``), writes the same hand-off files as the file oracle, and
imports the batch as tasks: one per queried sample, in query-rank order, carrying the model's
prediction as a pre-annotation (``predictions`` with ``model_version`` and ``score``; the cold start
has none). Pushing is idempotent: tasks already in the project are not imported twice.

**Whose tasks.** Every task carries the run's random identity (``data.hssal_run_id``, the
``run_id`` of ``state.json``), its batch (``data.hssal_batch``) and its sample (``data.sample_id``,
or the opaque ``data.ref`` when sample ids are hidden). ``RUN/<batch>/label_studio_push.json``
records the id the server gave each task, its sample and a digest of the image sent. A pull reads
only tasks with the run's identity and batch whose ids are in that record, so two runs sharing a
project (same ``loop.name`` or not) never read each other's annotations; a task whose sample or
image was changed in Label Studio is refused (:class:`~hssal_ray.errors.LabelFileError`, nothing
written), and a task deleted in Label Studio is named and pushed again (``partial=wait``) or left
out (``partial=continue``).

**Which project.** The project the run created is the run's whatever spelling of the URL reaches
it (``localhost`` or ``127.0.0.1``, a trailing slash): its description carries the run id, and the
run checks what the server reports, not the URL string. A server that does not have the run's
project is another server: a :class:`~hssal_ray.errors.ConfigError` names both URLs.

``collect`` pulls the batch's tasks with their annotations (polling every ``poll_s`` seconds for up to
``wait_s``; while it waits it prints the project URL, how many tasks are left and, every minute,
how many are done) and validates them exactly like a file import
(:func:`~hssal_ray.oracle.labels.parse_label_rows`): any invalid answer (unknown class, conflicting
annotations, ...) raises :class:`~hssal_ray.errors.LabelFileError` and nothing is written. Skipped,
cancelled and missing tasks follow ``partial``: ``wait`` waits for them (the run exits
``awaiting_labels`` when ``wait_s`` runs out), ``continue`` goes on with the labels given once every
task was seen or the wait is over. A valid answer is stored as ``labels.csv`` (plus the pulled
annotations, without images, in ``label_studio_export.json``); from then on ``collect`` reads that
file, like the file oracle.

A server call that fails in a way that may pass (connection refused or reset, a timeout, HTTP
429/5xx: a server restarting) is retried with exponential backoff (1 s, 2 s, 4 s, ... at most 60 s
apart) for up to ``retry_s`` (:data:`RETRY_S`, 10 min) before the run stops with a
:class:`LabelStudioError`; a refused token, a missing project or a reply that is not Label Studio's
fails at once.

The API token comes from an environment variable (``oracle.token_env``); it is never written to the
run directory, to the config or to logs.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from hssal_ray import _io
from hssal_ray._progress import duration
from hssal_ray.errors import ConfigError, LabelFileError, StateError
from hssal_ray.oracle._handoff import _basename, _parent, partial_hint, run_history
from hssal_ray.oracle._label_studio import rows_from_label_studio
from hssal_ray.oracle._ls_client import LabelStudioClient, LabelStudioError
from hssal_ray.oracle.base import LABELS_FILE, OracleAnswer, PartialPolicy
from hssal_ray.oracle.human import INSTRUCTIONS_FILE, LABEL_CONFIG_FILE, TASKS_FILE, HumanOracle
from hssal_ray.oracle.labels import PARTIAL_OVERRIDE, parse_label_rows, write_labels_csv

__all__ = [
    "LabelStudioOracle",
    "LabelStudioError",
    "PROJECT_FILE",
    "PUSH_FILE",
    "EXPORT_FILE",
    "RUN_ID_FIELD",
    "TOKEN_ENV",
    "RETRY_S",
    "PROGRESS_EVERY_S",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROJECT_FILE = "label_studio.json"
"""In the run directory: ``{"url", "project_id", "title", "run_id"}`` of the project the run created."""
PUSH_FILE = "label_studio_push.json"
"""In a round directory: ``{"url", "project_id", "run_id", "batch", "tasks": {ref: task id},
"samples": {ref: sample id}, "image_sha256": {ref: digest}}`` of the pushed batch."""
EXPORT_FILE = "label_studio_export.json"
"""In a round directory: the pulled tasks and annotations that were accepted (images left out)."""
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
"""The environment variable the API token is read from unless told otherwise (``oracle.token_env``)."""
RUN_ID_FIELD = "hssal_run_id"
"""The task data field holding the run's identity (``RunState.run_id``)."""
RETRY_S = 600.0
"""How long server calls that may pass (connection refused, timeouts, HTTP 429/5xx) are retried."""
RETRY_FIRST_S = 1.0
"""The first retry's delay; each next one doubles, up to :data:`RETRY_MAX_DELAY_S`."""
RETRY_MAX_DELAY_S = 60.0
"""The longest delay between two retries."""
PROGRESS_EVERY_S = 60.0
"""While ``collect`` waits for annotations: seconds between two progress lines."""


def _digest(value: Any) -> str:
    """SHA-256 of a task's image reference (a data URI or a path), to tell if it was changed."""
    return hashlib.sha256(str(value if value is not None else "").encode("utf-8")).hexdigest()


def _batch_name(round_dir: str) -> str:
    """``cold start`` or ``round 3``: how progress lines name a batch."""
    name = _basename(round_dir)
    if name.startswith("round_") and name[6:].isdigit():
        return f"round {int(name[6:])}"
    return name.replace("_", " ")


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
        retry_s: How long a failing server call that may pass is retried (:data:`RETRY_S`).
        progress: Where the lines for the person at the console go (the loop's ``[hssal]`` lines;
            default: stderr).
        progress_every_s: Seconds between two progress lines while waiting.
        sleep: Sleep function (tests pass a fake clock's).
        clock: Monotonic clock.
        **kwargs: :class:`HumanOracle` parameters (``load_image``, ``partial``, ``image_size``,
            ``image_format``, ``hide_sample_id``, ...).
    """

    pulls_labels: ClassVar[bool] = True
    reuse_stored_answer: ClassVar[bool] = True
    """Once a batch's answer is stored (``labels.csv``), ``collect`` reads it instead of the server
    (the loop: a round's labels are final). False: every ``collect`` pulls again."""
    project_purpose: ClassVar[str] = (
        "Active-learning queries of the hssal_ray run {run_dir}, one batch per round"
    )
    """The project description of a project the oracle creates (its run-id marker is appended)."""

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        url: str,
        token: str,
        token_env: str = TOKEN_ENV,
        project_id: int | None = None,
        wait_s: float = 0.0,
        poll_s: float = 10.0,
        retry_s: float = RETRY_S,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
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
        if wait_s < 0 or poll_s <= 0 or retry_s < 0 or progress_every_s <= 0:
            raise ValueError(
                "wait_s and retry_s must be >= 0, poll_s and progress_every_s > 0, got "
                f"{wait_s}, {retry_s}, {poll_s} and {progress_every_s}"
            )
        self.client = LabelStudioClient(url, token, token_env)
        self.token_env = token_env
        self.project_id = project_id
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self.retry_s = float(retry_s)
        self.progress_every_s = float(progress_every_s)
        self._progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self._sleep = sleep
        self._clock = clock
        self._status: dict[str, str] = {}
        self._counts: dict[str, tuple[int, int, int, int]] = {}  # answered, skipped, to do, of
        self._projects: dict[str, int] = {}  # run dir -> the project checked for it
        self._run_ids: dict[str, str] = {}
        self._told: dict[str, set[str]] = {}  # round dir -> what was already said about it

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.client.url

    # ------------------------------------------------------------------ protocol
    def request(self, round_dir: str, ids: Sequence[str], context: Mapping[str, Any] | None = None) -> None:
        """Write the hand-off files and import the batch into the project (idempotent).

        Raises:
            LabelStudioError: The server cannot be reached (after :data:`RETRY_S` of retries) or
                refuses the token or the import.
            ConfigError: ``oracle.project_id`` names a project whose label config does not fit, or
                the run's project is not on the server ``oracle.url`` reaches.
            StateError: ``state.json`` holds no run id.
        """
        ctx = dict(context or {})
        run_dir = str(ctx.get("run_dir") or _parent(round_dir))
        ctx["run_dir"] = run_dir
        self._retrying(run_dir, "looking up the project", lambda: self._project(run_dir))
        super().request(round_dir, ids, ctx)
        self.push(round_dir, run_dir)

    def push(self, round_dir: str, run_dir: str | None = None) -> int:
        """Import a batch whose hand-off files are written into the project (idempotent: tasks already
        there are not imported twice); returns the project id. :meth:`request` ends with it.

        Raises:
            LabelStudioError, ConfigError, StateError: As :meth:`request`.
        """
        run_dir = run_dir or _parent(round_dir)
        pid = self._retrying(run_dir, "looking up the project", lambda: self._project(run_dir))
        self._retrying(run_dir, "pushing the batch", lambda: self._push(round_dir, run_dir, pid))
        return pid

    def last_status(self, round_dir: str) -> str | None:
        """What the last pull of the batch found (``3 of 10 tasks labeled, ...``), None before one."""
        return self._status.get(round_dir)

    def collect(self, round_dir: str, ids: Sequence[str]) -> OracleAnswer | None:
        """The validated answer, pulled from Label Studio (polling up to ``wait_s``), or ``None``.

        Raises:
            LabelFileError: An annotation is invalid, or a task's sample or image was changed in
                Label Studio; nothing was written (the run is unchanged).
            LabelStudioError: The server cannot be reached (after :data:`RETRY_S` of retries).
        """
        if self.reuse_stored_answer and _io.exists(_io.join(round_dir, LABELS_FILE)):
            return super().collect(round_dir, ids)
        run_dir = _parent(round_dir)
        pid = self._retrying(run_dir, "looking up the project", lambda: self._project(run_dir))
        if not self._pushed(round_dir, run_dir, pid):
            self.request(round_dir, ids, None)
        start = self._clock()
        deadline = start + self.wait_s
        next_line = None
        while True:
            final = self._clock() >= deadline
            answer = self._retrying(
                run_dir, "polling for annotations", lambda f=final: self._pull(round_dir, ids, final=f)
            )
            if answer is not None or final:
                return answer
            now = self._clock()
            if next_line is None:
                self._say(self._waiting_line(round_dir, pid))
                next_line = now + self.progress_every_s
            elif now >= next_line:
                self._say(self._progress_line(round_dir, now - start))
                next_line = now + self.progress_every_s
            self._sleep(max(min(self.poll_s, deadline - now), 0.0))

    def instructions(self, round_dir: str) -> str:
        """``INSTRUCTIONS.txt`` plus what the last pull found."""
        text = _io.read_text(_io.join(round_dir, INSTRUCTIONS_FILE))
        status = self._status.get(round_dir)
        return f"{text}\nLast look at Label Studio: {status}\n" if status else text

    # ------------------------------------------------------------------ console
    def _say(self, line: str) -> None:
        self._progress(line)

    def _waiting_line(self, round_dir: str, pid: int) -> str:
        answered, skipped, todo, n = self._counts.get(round_dir, (0, 0, 0, 0))
        gaps = (
            "skipped tasks need a label too (oracle.partial=wait)"
            if self.partial == "wait"
            else "skipped tasks are left out (oracle.partial=continue)"
        )
        return (
            f"[hssal] {_batch_name(round_dir)}: {todo} of {n} samples to label in Label Studio "
            f"({answered} labeled, {skipped} skipped): {self.url}/projects/{pid}/data "
            f"(tasks with hssal_batch={_basename(round_dir)}). The run goes on by itself once they are "
            f"labeled; {gaps}. It polls every {self.poll_s:g} s for up to {duration(self.wait_s)} "
            f"(oracle.wait_s); stop it any time and resume later with "
            f"`{self.resume_command(_parent(round_dir), None)}`."
        )

    def _progress_line(self, round_dir: str, waited: float) -> str:
        answered, skipped, todo, n = self._counts.get(round_dir, (0, 0, 0, 0))
        line = (
            f"[hssal] {_batch_name(round_dir)}: {answered} of {n} labeled in Label Studio, {skipped} "
            f"skipped, {todo} to do (waited {duration(waited)} of {duration(self.wait_s)})"
        )
        if skipped and self.partial == "wait":
            line += (
                f"; skipped tasks need a label under oracle.partial=wait, or resume with {PARTIAL_OVERRIDE}"
            )
        return line

    def _retrying(self, run_dir: str, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with exponential backoff while it fails in a way that may pass."""
        delay, tries, first = RETRY_FIRST_S, 0, None
        while True:
            try:
                return call()
            except LabelStudioError as e:
                if not e.transient:
                    raise
                tries += 1
                now = self._clock()
                first = now if first is None else first
                if now - first + delay > self.retry_s:
                    raise LabelStudioError(
                        f"{e} Gave up {what} after {tries} tries over {duration(now - first)}: resume "
                        f"the run once the server answers: `{self.resume_command(run_dir, None)}`",
                        status=e.status,
                    ) from None
                self._say(
                    f"[hssal] {what}: {e} Trying again in {delay:g} s (try {tries + 1}; the run gives up "
                    f"after {duration(self.retry_s)} without an answer)"
                )
                self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)

    # ------------------------------------------------------------------ run identity
    def _run_id(self, run_dir: str) -> str:
        """The run's random identity from ``state.json`` (tags every task the run pushes)."""
        if run_dir not in self._run_ids:
            from hssal_ray.state import RunState

            state = RunState.load(run_dir)
            if state is None or not state.run_id:
                raise StateError(
                    f"{RunState.path(run_dir)} holds no run id, which tags this run's tasks in Label Studio "
                    f"so that no other run takes them: resume the run with "
                    f"`{self.resume_command(run_dir, None)}` (it gives the run one)"
                )
            self._run_ids[run_dir] = state.run_id
        return self._run_ids[run_dir]

    def _history(self, run_dir: str, batch: str) -> tuple[dict[str, str], dict[str, int | None]]:
        """``(refs, earlier)`` of the run's batches (:func:`~hssal_ray.oracle._handoff.run_history`)."""
        return run_history(run_dir, batch)

    # ------------------------------------------------------------------ project
    def _project(self, run_dir: str) -> int:
        if run_dir in self._projects:
            return self._projects[run_dir]
        if self.project_id is not None:
            project = self.client.find_project(self.project_id)
            if project is None:
                raise ConfigError(
                    f"oracle.project_id={self.project_id}: Label Studio at {self.url} has no project "
                    f"{self.project_id}; give the id of one of its projects (the number in its URL "
                    "/projects/N), or leave oracle.project_id unset to have the run create its own project"
                )
            self._check_project(project, f"oracle.project_id={self.project_id}")
            pid = int(self.project_id)
        else:
            pid = self._own_project(run_dir)
        self._projects[run_dir] = pid
        return pid

    def _marker(self, run_dir: str) -> str:
        return f"hssal run id {self._run_id(run_dir)}"

    def _own_project(self, run_dir: str) -> int:
        """The project this run created (checked on the server), or a new one."""
        path = _io.join(run_dir, PROJECT_FILE)
        run_id = self._run_id(run_dir)
        if not _io.exists(path):
            return self._create_project(run_dir, path)
        doc = _io.read_json(path)
        pid = doc.get("project_id") if isinstance(doc, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise StateError(
                f"{path} is not a Label Studio project record (no integer project_id); delete it to have "
                "the run create a new project (the pending batch is pushed to it)"
            )
        stored = str(doc.get("url") or "").rstrip("/")
        same_url = stored == self.url
        project = self.client.find_project(pid)
        if project is not None and self._is_ours(project, doc, pid, run_id, same_url):
            if not same_url:
                logger.info("%s reaches this run's project %d (recorded at %s)", self.url, pid, stored)
            return pid
        if project is None:
            found = f"it has no project {pid}"
        else:
            found = f"its project {pid} ({project.get('title')!r}) is not this run's (no run id {run_id})"
        if same_url:
            raise ConfigError(
                f"{path} records this run's Label Studio project {pid} at {self.url}, but {found} "
                f"(deleted or replaced in Label Studio?). Delete {path} to have the run create a new "
                "project (the pending batch is pushed again), or set oracle.project_id to an existing one"
            )
        raise ConfigError(
            f"{path} records this run's Label Studio project {pid} at {stored}, but oracle.url={self.url} "
            f"is another server: {found}. Resume with oracle.url={stored} to reach the run's project and "
            f"its annotations; or set oracle.project_id to a project of {self.url}, or delete {path} to "
            "have the run create a new project there"
        )

    def _is_ours(
        self, project: Mapping[str, Any], doc: Mapping[str, Any], pid: int, run_id: str, same_url: bool
    ) -> bool:
        """Whether the server's project ``pid`` is the one this run created."""
        if f"hssal run id {run_id}" in str(project.get("description") or ""):
            return True
        if doc.get("run_id") == run_id and self.client.tasks(pid, {RUN_ID_FIELD: run_id}, limit=1):
            return True  # the description was edited; the run's tasks are there
        # a record from before run ids: the URL as written is all it has
        return "run_id" not in doc and same_url and project.get("title") == doc.get("title")

    def _create_project(self, run_dir: str, path: str) -> int:
        self.client.whoami()
        title = f"hssal {_basename(run_dir)}"[:50]
        project = self.client.create_project(
            title,
            self.label_config(),
            description=f"{self.project_purpose.format(run_dir=run_dir)} ({self._marker(run_dir)}).",
        )
        pid = int(project["id"])
        record = {"url": self.url, "project_id": pid, "title": title, "run_id": self._run_id(run_dir)}
        _io.atomic_write_json(path, record)
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
    def _record(self, round_dir: str, run_dir: str, pid: int) -> dict[str, Any] | None:
        """The push record of this run's batch in project ``pid``, ``None`` if there is none."""
        path = _io.join(round_dir, PUSH_FILE)
        if not _io.exists(path):
            return None
        doc = _io.read_json(path)
        if not isinstance(doc, dict) or doc.get("run_id") != self._run_id(run_dir):
            if isinstance(doc, dict) and "run_id" not in doc:
                logger.warning(
                    "%s was written before tasks carried the run's id: its tasks cannot be told apart from "
                    "another run's and are not read; the batch is pushed again, tagged",
                    path,
                )
            return None
        return doc if doc.get("project_id") == pid else None

    def _pushed(self, round_dir: str, run_dir: str, pid: int) -> bool:
        return self._record(round_dir, run_dir, pid) is not None

    def _push(self, round_dir: str, run_dir: str, pid: int, again: Collection[str] = ()) -> dict[str, Any]:
        """Import the batch's tasks that the project lacks (``again``: refs to import anew).

        Returns:
            The push record (:data:`PUSH_FILE`).
        """
        record = self._record(round_dir, run_dir, pid)
        if record is not None and not again:
            return record
        run_id, batch = self._run_id(run_dir), _basename(round_dir)
        wanted = {t["data"]["ref"]: t for t in _io.read_json(_io.join(round_dir, TASKS_FILE))}
        samples = self._samples(round_dir, wanted)
        mine: dict[str, int] = {}
        digests: dict[str, str] = {}
        if record is not None:
            mine = {r: int(i) for r, i in record["tasks"].items() if r not in again}
            digests = {r: d for r, d in record["image_sha256"].items() if r not in again}
        # tasks this run imported but did not record (an import that failed after the server took it,
        # a crash before the record was written) are adopted, not imported twice
        known = set(mine.values())
        for t in sorted(self.client.tasks(pid, {RUN_ID_FIELD: run_id, "hssal_batch": batch}), key=_id):
            ref = str(t["data"].get("ref"))
            if ref in wanted and ref not in mine and _id(t) not in known:
                if self._same(t["data"], wanted[ref]["data"]):
                    mine[ref], digests[ref] = _id(t), _digest(t["data"].get("image"))
        new = [
            {
                **{k: v for k, v in t.items() if k != "id"},
                "data": {**t["data"], RUN_ID_FIELD: run_id},
            }
            for ref, t in wanted.items()
            if ref not in mine
        ]
        new_ids = self.client.import_tasks(pid, new) if new else []
        for t, i in zip(new, new_ids, strict=True):
            mine[t["data"]["ref"]], digests[t["data"]["ref"]] = i, _digest(t["data"].get("image"))
        doc = {
            "url": self.url,
            "project_id": pid,
            "run_id": run_id,
            "batch": batch,
            "tasks": mine,
            "samples": {r: samples[r] for r in mine},
            "image_sha256": digests,
        }
        _io.atomic_write_json(_io.join(round_dir, PUSH_FILE), doc)
        n_pred = sum(1 for t in new if t.get("predictions"))
        logger.info(
            "pushed %d tasks of %s to Label Studio project %d (%d with predictions; %d were there already)",
            len(new),
            batch,
            pid,
            n_pred,
            len(mine) - len(new),
        )
        return doc

    def _samples(self, round_dir: str, wanted: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """``ref -> sample id`` of the hand-off's tasks (their ``sample_id``, or the ref resolved)."""
        refs: dict[str, str] = {}
        if any(not t["data"].get("sample_id") for t in wanted.values()):
            refs, _ = self._history(_parent(round_dir), _basename(round_dir))
        return {ref: str(t["data"].get("sample_id") or refs.get(ref, "")) for ref, t in wanted.items()}

    def _same(self, data: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
        return not self._mismatch(
            data, str(want.get("ref")), want.get("sample_id"), _digest(want.get("image"))
        )

    def _mismatch(self, data: Mapping[str, Any], ref: str, sid: Any, image_sha: str) -> list[str]:
        """How a task's data differs from what this run pushed (empty: it does not)."""
        out = []
        if str(data.get("ref")) != ref:
            out.append(f"ref {data.get('ref')!r} instead of {ref!r}")
        if sid and str(data.get("sample_id")) != str(sid):
            out.append(f"sample_id {data.get('sample_id')!r} instead of {sid!r}")
        if _digest(data.get("image")) != image_sha:
            out.append("another image than the one pushed")
        return out

    def _own_tasks(
        self, round_dir: str, record: Mapping[str, Any], found: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The pulled tasks this run pushed for the batch, and the refs of those gone from the project.

        Raises:
            LabelFileError: A task's sample or image is not what this run pushed.
        """
        by_id = {int(i): r for r, i in record["tasks"].items()}
        mine: list[dict[str, Any]] = []
        strangers: list[int] = []
        changed: list[str] = []
        for t in found:
            ref = by_id.get(_id(t))
            if ref is None:
                strangers.append(_id(t))
                continue
            shown = "sample_id" in t["data"] or not self.hide_sample_id
            sid = record["samples"].get(ref) if shown else None
            diff = self._mismatch(t["data"], ref, sid, record["image_sha256"].get(ref, ""))
            if diff:
                changed.append(f"task {_id(t)} ({'; '.join(diff)})")
            mine.append(t)
        pid = record["project_id"]
        if changed:
            raise LabelFileError(
                f"Label Studio project {pid} at {self.url} (tasks of {_basename(round_dir)}): "
                f"{len(changed)} task(s) no longer show what this run asked: {', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}. Their annotations are not taken as labels; nothing "
                "was changed. Delete those tasks in Label Studio and resume: the run pushes the samples "
                "again (oracle.partial=wait) or goes on without them (oracle.partial=continue)"
            )
        if strangers:
            self._once(
                round_dir,
                f"strangers {sorted(strangers)}",
                lambda: logger.warning(
                    "Label Studio project %s: tasks %s carry this run's id and batch %s but were not pushed "
                    "by it (copies?): their annotations are ignored",
                    pid,
                    sorted(strangers)[:10],
                    _basename(round_dir),
                ),
            )
        seen = {by_id[_id(t)] for t in mine}
        gone = [r for r in record["tasks"] if r not in seen]
        return mine, gone

    def _once(self, round_dir: str, key: str, say: Callable[[], None]) -> None:
        told = self._told.setdefault(round_dir, set())
        if key not in told:
            told.add(key)
            say()

    def _pull(self, round_dir: str, ids: Sequence[str], *, final: bool) -> OracleAnswer | None:
        run_dir = _parent(round_dir)
        pid = self._project(run_dir)
        record = self._push(round_dir, run_dir, pid)  # the record; pushes only if there is none
        batch = _basename(round_dir)
        found = self.client.tasks(pid, {RUN_ID_FIELD: record["run_id"], "hssal_batch": batch})
        tasks, gone = self._own_tasks(round_dir, record, found)
        if gone:
            names = ", ".join(repr(record["samples"].get(r) or r) for r in gone[:10])
            names += " ..." if len(gone) > 10 else ""
            if self.partial == "wait":
                self._push(round_dir, run_dir, pid, again=gone)
                self._say(
                    f"[hssal] {_batch_name(round_dir)}: {len(gone)} task(s) were deleted from Label Studio "
                    f"project {pid} (sample ids {names}): pushed again, since oracle.partial=wait needs a "
                    f"label for each; resume with {PARTIAL_OVERRIDE} to go on without them"
                )
            else:
                self._once(
                    round_dir,
                    f"gone {sorted(gone)}",
                    lambda: self._say(
                        f"[hssal] {_batch_name(round_dir)}: {len(gone)} task(s) were deleted from Label "
                        f"Studio project {pid} (sample ids {names}): left out (oracle.partial=continue)"
                    ),
                )
        dropped = len(gone) if self.partial == "continue" else 0
        rows, shape_problems, _ = rows_from_label_studio(tasks)
        rows = rows or []
        n = len(dict.fromkeys(ids))
        answered = sum(1 for r in rows if (r.status == "answered" and r.label) or r.status == "conflict")
        skipped = sum(1 for r in rows if r.status == "skipped")
        pending = max(n - answered - skipped - dropped, 0)
        self._counts[round_dir] = (answered, skipped, pending, n)
        where = f"{self.url}/projects/{pid}"
        self._status[round_dir] = (
            f"{answered} of {n} tasks labeled, {skipped} skipped, {pending} to do ({where})"
        )
        if skipped and self.partial == "wait":
            self._status[round_dir] += (
                f"; skipped tasks need a label under oracle.partial=wait, or resume with {PARTIAL_OVERRIDE}"
            )
        if not answered and not shape_problems:
            return None
        refs, earlier = self._history(run_dir, batch)
        answer = parse_label_rows(
            rows,
            source=f"Label Studio project {pid} at {self.url} (tasks of {_basename(run_dir)}:{batch})",
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


def _id(task: Mapping[str, Any]) -> int:
    return int(task.get("id", -1))
