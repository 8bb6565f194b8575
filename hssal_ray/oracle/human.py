"""The human oracle: hand the query batch to annotators as files, pause, import their labels.

``request`` writes, next to the loop's ``query.csv`` in the round directory:

* ``labels_template.csv``: ``sample_id,label`` with the queried ids and empty labels, to fill in;
* ``label_studio_tasks.json`` + ``label_config.xml``: a Label Studio import (images as JPEG or PNG data
  URIs; each task tagged with the run and the batch, ordered by query rank, carrying the model's
  prediction as a pre-annotation when the round has a ``scores.parquet``);
* ``contact_sheet.html``: a self-contained page of thumbnails with sample id (or ref) and rank;
* ``INSTRUCTIONS.txt``: what to do next, the allowed class names and the exact resume command.

``collect`` returns ``None`` until :meth:`HumanOracle.import_labels` (called by
``python -m hssal_ray.loop --resume RUN --labels FILE``) has validated a file and written the
canonical ``labels.csv``.

With ``hide_sample_id`` the annotators see an opaque ``ref`` (``<run>:<batch>:<rank>``) instead of
the sample id, which on folder-organised data names the class (``airplane/airplane22.jpg``); refs
are resolved back through the run's ``query.csv`` files.
"""

from __future__ import annotations

import io
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal
from xml.sax.saxutils import quoteattr

import numpy as np

from hssal_ray import _csv, _io
from hssal_ray.oracle._handoff import (
    QUERY_FILE,  # noqa: F401
    _basename,
    _contact_sheet,
    _int_or,
    _parent,
    _read_query,
    partial_hint,
    read_predictions,
    reveals_folder,
    run_history,
    task_ref,
)
from hssal_ray.oracle._images import IMAGE_FORMATS, image_data_uri, png_data_uri
from hssal_ray.oracle._label_studio import LABEL_FROM_NAME
from hssal_ray.oracle.base import LABELS_FILE, Oracle, OracleAnswer, PartialPolicy
from hssal_ray.oracle.labels import PARTIAL_OVERRIDE, parse_label_file, write_labels_csv

__all__ = [
    "HumanOracle",
    "TEMPLATE_FILE",
    "TASKS_FILE",
    "LABEL_CONFIG_FILE",
    "CONTACT_SHEET_FILE",
    "INSTRUCTIONS_FILE",
    "reveals_folder",
    "run_history",
    "read_predictions",
]

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "labels_template.csv"
TASKS_FILE = "label_studio_tasks.json"
LABEL_CONFIG_FILE = "label_config.xml"
CONTACT_SHEET_FILE = "contact_sheet.html"
INSTRUCTIONS_FILE = "INSTRUCTIONS.txt"


class HumanOracle(Oracle):
    """Exports each query batch for people to label and imports their validated answer.

    Args:
        class_names: Class names, index = class id (``classes.json``).
        load_image: ``sample_id -> (H, W, 3) uint8`` image (other layouts and dtypes are converted),
            used for thumbnails and the Label Studio tasks. ``None``: files without images (the
            tasks then use ``context["image_paths"]`` if given). A failing load is logged and that
            sample shown without image.
        partial: ``wait``: a file must label every queried id. ``continue``: a partial answer is
            accepted; its unanswered ids come back in ``OracleAnswer.missing``.
        thumb_size: Longest side of contact-sheet thumbnails, in pixels.
        image_size: Longest side of the images embedded in the Label Studio tasks, in pixels.
        image_format: Encoding of the images embedded in the tasks: ``jpeg`` (small) or ``png``.
        hide_sample_id: Show annotators an opaque ``ref`` instead of the sample id (use
            :func:`reveals_folder` to decide).
    """

    source: ClassVar[str] = "human"
    may_pause: ClassVar[bool] = True
    accepts_label_files: ClassVar[bool] = True

    def __init__(
        self,
        class_names: Sequence[str],
        load_image: Callable[[str], np.ndarray] | None = None,
        partial: PartialPolicy = "wait",
        thumb_size: int = 128,
        image_size: int = 256,
        image_format: Literal["jpeg", "png"] = "jpeg",
        hide_sample_id: bool = False,
    ) -> None:
        """Store the parameters (see the class docstring)."""
        if not class_names:
            raise ValueError("class_names is empty")
        if len(set(class_names)) != len(class_names):
            raise ValueError("class_names has duplicates")
        if partial not in ("wait", "continue"):
            raise ValueError(f"partial must be 'wait' or 'continue', got {partial!r}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        self.image_format = image_format
        self.hide_sample_id = bool(hide_sample_id)
        self.class_names = list(class_names)
        self.load_image = load_image
        self.partial: PartialPolicy = partial
        self.thumb_size = thumb_size
        self.image_size = image_size

    def request(self, round_dir: str, ids: Sequence[str], context: Mapping[str, Any] | None = None) -> None:
        """Write the hand-off files for ``ids`` into ``round_dir`` (see the module docstring).

        Args:
            round_dir: The round's directory (the loop wrote ``query.csv`` there).
            ids: Queried sample ids, in rank order.
            context: Optional ``run_dir`` (for the resume command; default: parent of ``round_dir``),
                ``round``, ``ranks`` (``sample_id -> rank``) and ``image_paths`` (``sample_id -> path
                or URL`` for the Label Studio tasks when there is no ``load_image``).
        """
        ctx = dict(context or {})
        ids = list(dict.fromkeys(ids))
        run_dir = str(ctx.get("run_dir") or _parent(round_dir))
        round_name = f"round {ctx['round']}" if "round" in ctx else _basename(round_dir)
        tasks, ranks, thumbs, query = self._tasks(round_dir, ids, ctx)
        refs = {
            t["data"]["ref"]: sid for t, sid in zip(tasks, sorted(ids, key=lambda s: ranks[s]), strict=True)
        }
        shown = {sid: ref for ref, sid in refs.items()} if self.hide_sample_id else {s: s for s in ids}

        template = io.StringIO()
        writer = _csv.writer(template, lineterminator="\n")
        writer.writerow(["ref" if self.hide_sample_id else "sample_id", "label"])
        writer.writerows([shown[sid], ""] for sid in ids)
        text = self._instructions(round_dir, run_dir, round_name, len(ids))
        _io.atomic_write_text(_io.join(round_dir, TEMPLATE_FILE), template.getvalue())
        _io.atomic_write_json(_io.join(round_dir, TASKS_FILE), tasks)
        _io.atomic_write_text(_io.join(round_dir, LABEL_CONFIG_FILE), self.label_config())
        sheet = _contact_sheet(round_name, ids, ranks, query, thumbs, self.class_names, text, shown)
        _io.atomic_write_text(_io.join(round_dir, CONTACT_SHEET_FILE), sheet)
        _io.atomic_write_text(_io.join(round_dir, INSTRUCTIONS_FILE), text)
        logger.info("query of %s handed to annotators:\n%s", round_name, text)

    def _tasks(
        self, round_dir: str, ids: list[str], ctx: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, str], dict[str, dict[str, str]]]:
        """The Label Studio tasks of the batch in rank order, the ranks, thumbnails and query rows."""
        query = _read_query(round_dir)
        ranks = {sid: int(r) for sid, r in (ctx.get("ranks") or {}).items()}
        for pos, sid in enumerate(ids, start=1):
            ranks.setdefault(sid, _int_or(query.get(sid, {}).get("rank"), pos))
        thumbs, images = self._encode_images(ids, ctx.get("image_paths") or {})
        run_name = _basename(str(ctx.get("run_dir") or _parent(round_dir)))
        batch = _basename(round_dir)
        preds = read_predictions(round_dir, ids, self.class_names)
        tasks = []
        for sid in sorted(ids, key=lambda s: ranks[s]):
            data: dict[str, Any] = {
                "image": images.get(sid, ""),
                "ref": task_ref(run_name, batch, ranks[sid]),
            }
            if not self.hide_sample_id:
                data["sample_id"] = sid
            data.update(rank=ranks[sid], hssal_run=run_name, hssal_batch=batch)
            if query.get(sid, {}).get("coordinates"):  # geo-referenced chips: where it is
                data["coordinates"] = query[sid]["coordinates"]
            task: dict[str, Any] = {"id": ranks[sid], "data": data}
            if sid in preds:
                name, score = preds[sid]
                task["predictions"] = [
                    {
                        "model_version": f"hssal {run_name}/{batch}",
                        "score": round(score, 6),
                        "result": [
                            {
                                "from_name": LABEL_FROM_NAME,
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [name]},
                            }
                        ],
                    }
                ]
            tasks.append(task)
        return tasks, ranks, thumbs, query

    def collect(self, round_dir: str, ids: Sequence[str]) -> OracleAnswer | None:
        """Return the imported answer, or ``None`` while no ``labels.csv`` has been imported.

        Args:
            round_dir: The round's directory.
            ids: The queried sample ids.

        Returns:
            The answer read back from ``round_dir/labels.csv``, or ``None``.

        Raises:
            LabelFileError: ``labels.csv`` was edited by hand and is no longer valid.
        """
        path = _io.join(round_dir, LABELS_FILE)
        if not _io.exists(path):
            return None
        return parse_label_file(path, query_ids=ids, class_names=self.class_names, partial=self.partial)

    def import_labels(self, round_dir: str, ids: Sequence[str], labels_path: str) -> OracleAnswer:
        """Validate a returned label file and, only if it is valid, store it as ``labels.csv``.

        Args:
            round_dir: The round's directory.
            ids: The queried sample ids.
            labels_path: The annotators' CSV or Label Studio JSON export.

        Returns:
            The validated answer (``collect`` returns the same from now on).

        Raises:
            LabelFileError: The file is invalid; nothing was written.
        """
        run_dir = _parent(round_dir)
        refs, earlier = run_history(run_dir, _basename(round_dir))
        answer = parse_label_file(
            labels_path,
            query_ids=ids,
            class_names=self.class_names,
            partial=self.partial,
            refs=refs,
            earlier=earlier,
            partial_hint=partial_hint(run_dir, labels_path),
        )
        if answer.already_labeled:
            logger.info(
                "%d tasks of earlier rounds in %s carry the labels already stored: kept as they are",
                len(answer.already_labeled),
                labels_path,
            )
        write_labels_csv(_io.join(round_dir, LABELS_FILE), answer.labels, self.class_names, order=list(ids))
        logger.info(
            "imported %d labels from %s into %s (%d unanswered)",
            answer.num_answered,
            labels_path,
            round_dir,
            len(answer.missing),
        )
        return answer

    def resume_command(self, run_dir: str, labels: str | None) -> str:
        """The command that resumes the run (with ``--labels FILE`` when given)."""
        cmd = f"python -m hssal_ray.loop --resume {shlex.quote(run_dir)}"
        return cmd + (f" --labels {shlex.quote(labels)}" if labels else "")

    def instructions(self, round_dir: str) -> str:
        """The text of ``INSTRUCTIONS.txt`` written by :meth:`request` (for the loop to print)."""
        return _io.read_text(_io.join(round_dir, INSTRUCTIONS_FILE))

    def label_config(self) -> str:
        """The Label Studio labeling config: the image, its ref or sample id, a single-choice class list."""
        shown = "ref" if self.hide_sample_id else "sample_id"
        choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in self.class_names)
        return (
            "<View>\n"
            '  <Image name="image" value="$image"/>\n'
            f'  <Text name="{shown}" value="${shown}"/>\n'
            f'  <Choices name="{LABEL_FROM_NAME}" toName="image" choice="single" showInLine="true"'
            ' required="true">\n'
            f"{choices}\n"
            "  </Choices>\n"
            "</View>\n"
        )

    def _encode_images(
        self, ids: Sequence[str], image_paths: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        thumbs: dict[str, str] = {}
        images: dict[str, str] = {sid: str(image_paths[sid]) for sid in ids if sid in image_paths}
        if self.load_image is None:
            return thumbs, images
        failed: list[str] = []
        for sid in ids:
            try:
                arr = self.load_image(sid)
                thumbs[sid] = png_data_uri(arr, self.thumb_size)
                images[sid] = image_data_uri(arr, self.image_size, self.image_format)
            except Exception as e:  # noqa: BLE001 - a bad image must not stop the hand-off
                failed.append(sid)
                logger.warning("no thumbnail for %r: %s: %s", sid, type(e).__name__, e)
        if failed:
            logger.warning("%d of %d queried images could not be loaded", len(failed), len(ids))
        return thumbs, images

    def _instructions(self, round_dir: str, run_dir: str, round_name: str, n: int) -> str:
        template = _io.join(round_dir, TEMPLATE_FILE)
        command = self.resume_command(run_dir, template)
        key = "ref" if self.hide_sample_id else "sample_id"
        gaps = (
            "Every sample needs a label: the file is rejected if any queried id is left empty, skipped "
            "or missing."
            if self.partial == "wait"
            else f"Samples may be left unlabeled: the run goes on with the labels given ({PARTIAL_OVERRIDE})."
        )
        hidden = (
            "   The tasks show an opaque ref (run:batch:rank) instead of the sample id, which would name\n"
            "   the class folder; the run maps it back.\n"
            if self.hide_sample_id
            else ""
        )
        classes = "\n".join(f"  {i:>3}  {c}" for i, c in enumerate(self.class_names))
        return (
            f"The active-learning run {run_dir} is waiting for labels ({round_name}, {n} samples).\n\n"
            f"1. Label the samples. Either\n"
            f"   a) fill the 'label' column of\n        {template}\n"
            f"      (header '{key},label', one row per queried sample; the thumbnails are in\n"
            f"      {_io.join(round_dir, CONTACT_SHEET_FILE)}), or\n"
            f"   b) import {_io.join(round_dir, TASKS_FILE)} into a Label Studio project set up with\n"
            f"      {_io.join(round_dir, LABEL_CONFIG_FILE)} (one project can serve every round), label,\n"
            f"      and export as JSON, JSON_MIN, CSV or TSV.\n"
            f"{hidden}"
            f"   Write each label as one of the class names below, exactly (case-sensitive).\n"
            f"   {gaps}\n"
            f"   Several answers for one sample count once when they agree; conflicts are rejected.\n\n"
            f"2. Resume the run with the filled file (or the Label Studio export instead):\n\n"
            f"   {command}\n\n"
            f"   An invalid file is rejected with the offending rows listed; the run is left unchanged.\n"
            f"   To go on with a partial answer, add {PARTIAL_OVERRIDE} to that command (it is then\n"
            f"   saved in the run's config.yaml and applies to the later rounds too).\n\n"
            f"Allowed class names ({len(self.class_names)}):\n{classes}\n"
        )

    def _repr_params(self) -> dict[str, Any]:
        return {
            "num_classes": len(self.class_names),
            "partial": self.partial,
            "images": self.load_image is not None,
            "hide_sample_id": self.hide_sample_id,
        }
