"""The human oracle: hand the query batch to annotators as files, pause, import their labels.

``request`` writes, next to the loop's ``query.csv`` in the round directory:

* ``labels_template.csv``: ``sample_id,label`` with the queried ids and empty labels, to fill in;
* ``label_studio_tasks.json`` + ``label_config.xml``: a Label Studio import (images as data URIs);
* ``contact_sheet.html``: a self-contained page of thumbnails with sample id and rank;
* ``INSTRUCTIONS.txt``: what to do next, the allowed class names and the exact resume command.

``collect`` returns ``None`` until :meth:`HumanOracle.import_labels` (called by
``python -m hssal_ray.loop --resume RUN --labels FILE``) has validated a file and written the
canonical ``labels.csv``.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from xml.sax.saxutils import quoteattr

import numpy as np

from hssal_ray import _io
from hssal_ray.oracle._images import png_data_uri
from hssal_ray.oracle.base import LABELS_FILE, Oracle, OracleAnswer, PartialPolicy
from hssal_ray.oracle.labels import parse_label_file, write_labels_csv

__all__ = [
    "HumanOracle",
    "TEMPLATE_FILE",
    "TASKS_FILE",
    "LABEL_CONFIG_FILE",
    "CONTACT_SHEET_FILE",
    "INSTRUCTIONS_FILE",
]

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "labels_template.csv"
TASKS_FILE = "label_studio_tasks.json"
LABEL_CONFIG_FILE = "label_config.xml"
CONTACT_SHEET_FILE = "contact_sheet.html"
INSTRUCTIONS_FILE = "INSTRUCTIONS.txt"
QUERY_FILE = "query.csv"


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
    """

    source: ClassVar[str] = "human"
    may_pause: ClassVar[bool] = True

    def __init__(
        self,
        class_names: Sequence[str],
        load_image: Callable[[str], np.ndarray] | None = None,
        partial: PartialPolicy = "wait",
        thumb_size: int = 128,
        image_size: int = 256,
    ) -> None:
        """Store the parameters (see the class docstring)."""
        if not class_names:
            raise ValueError("class_names is empty")
        if len(set(class_names)) != len(class_names):
            raise ValueError("class_names has duplicates")
        if partial not in ("wait", "continue"):
            raise ValueError(f"partial must be 'wait' or 'continue', got {partial!r}")
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
        query = _read_query(round_dir)
        ranks = {sid: int(r) for sid, r in (ctx.get("ranks") or {}).items()}
        for pos, sid in enumerate(ids, start=1):
            ranks.setdefault(sid, _int_or(query.get(sid, {}).get("rank"), pos))
        thumbs, images = self._encode_images(ids, ctx.get("image_paths") or {})
        run_dir = str(ctx.get("run_dir") or _parent(round_dir))
        round_name = f"round {ctx['round']}" if "round" in ctx else _basename(round_dir)

        template = io.StringIO()
        writer = csv.writer(template, lineterminator="\n")
        writer.writerow(["sample_id", "label"])
        writer.writerows([sid, ""] for sid in ids)
        tasks = [
            {"id": ranks[sid], "data": {"image": images.get(sid, ""), "sample_id": sid, "rank": ranks[sid]}}
            for sid in ids
        ]
        text = self._instructions(round_dir, run_dir, round_name, len(ids))
        _io.atomic_write_text(_io.join(round_dir, TEMPLATE_FILE), template.getvalue())
        _io.atomic_write_json(_io.join(round_dir, TASKS_FILE), tasks)
        _io.atomic_write_text(_io.join(round_dir, LABEL_CONFIG_FILE), self.label_config())
        sheet = _contact_sheet(round_name, ids, ranks, query, thumbs, self.class_names, text)
        _io.atomic_write_text(_io.join(round_dir, CONTACT_SHEET_FILE), sheet)
        _io.atomic_write_text(_io.join(round_dir, INSTRUCTIONS_FILE), text)
        logger.info("query of %s handed to annotators:\n%s", round_name, text)

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
        answer = parse_label_file(
            labels_path, query_ids=ids, class_names=self.class_names, partial=self.partial
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

    def instructions(self, round_dir: str) -> str:
        """The text of ``INSTRUCTIONS.txt`` written by :meth:`request` (for the loop to print)."""
        return _io.read_text(_io.join(round_dir, INSTRUCTIONS_FILE))

    def label_config(self) -> str:
        """The Label Studio labeling config: the image and one single-choice list of the classes."""
        choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in self.class_names)
        return (
            "<View>\n"
            '  <Image name="image" value="$image"/>\n'
            '  <Text name="sample_id" value="$sample_id"/>\n'
            '  <Choices name="label" toName="image" choice="single" showInLine="true" required="true">\n'
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
                images[sid] = png_data_uri(arr, self.image_size)
            except Exception as e:  # noqa: BLE001 - a bad image must not stop the hand-off
                failed.append(sid)
                logger.warning("no thumbnail for %r: %s: %s", sid, type(e).__name__, e)
        if failed:
            logger.warning("%d of %d queried images could not be loaded", len(failed), len(ids))
        return thumbs, images

    def _instructions(self, round_dir: str, run_dir: str, round_name: str, n: int) -> str:
        template = _io.join(round_dir, TEMPLATE_FILE)
        command = f"python -m hssal_ray.loop --resume {shlex.quote(run_dir)} --labels {shlex.quote(template)}"
        gaps = (
            "Every row needs a label: the file is rejected if any queried id is left empty or missing."
            if self.partial == "wait"
            else "Rows may be left empty: the run continues with the labels given (partial='continue')."
        )
        classes = "\n".join(f"  {i:>3}  {c}" for i, c in enumerate(self.class_names))
        return (
            f"The active-learning run {run_dir} is waiting for labels ({round_name}, {n} samples).\n\n"
            f"1. Label the samples. Either\n"
            f"   a) fill the 'label' column of\n        {template}\n"
            f"      (header 'sample_id,label', one row per queried id; the thumbnails are in\n"
            f"      {_io.join(round_dir, CONTACT_SHEET_FILE)}), or\n"
            f"   b) import {_io.join(round_dir, TASKS_FILE)} into a Label Studio project set up with\n"
            f"      {_io.join(round_dir, LABEL_CONFIG_FILE)}, label, and export as JSON.\n"
            f"   Write each label as one of the class names below, exactly (case-sensitive).\n"
            f"   {gaps}\n\n"
            f"2. Resume the run with the filled file (or the Label Studio JSON export instead):\n\n"
            f"   {command}\n\n"
            f"   An invalid file is rejected with the offending rows listed; the run is left unchanged.\n\n"
            f"Allowed class names ({len(self.class_names)}):\n{classes}\n"
        )

    def _repr_params(self) -> dict[str, Any]:
        return {
            "num_classes": len(self.class_names),
            "partial": self.partial,
            "images": self.load_image is not None,
        }


def _read_query(round_dir: str) -> dict[str, dict[str, str]]:
    """``query.csv`` rows by sample id (empty if the file is absent or unreadable)."""
    path = _io.join(round_dir, QUERY_FILE)
    try:
        if not _io.exists(path):
            return {}
        reader = csv.DictReader(io.StringIO(_io.read_text(path).lstrip("\ufeff")))
        return {row["sample_id"]: row for row in reader if row.get("sample_id")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as e:
        logger.warning("could not read %s (%s); using the order of the ids as ranks", path, e)
        return {}


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _parent(path: str) -> str:
    trimmed = path.rstrip("/")
    return trimmed.rsplit("/", 1)[0] if "://" in trimmed else posixpath.dirname(trimmed) or "."


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;text-align:center;font-size:12px}
.card img{max-width:100%;image-rendering:auto;display:block;margin:0 auto 4px}
.none{height:96px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.id{font-family:monospace;word-break:break-all}
pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
"""


def _contact_sheet(
    round_name: str,
    ids: Sequence[str],
    ranks: Mapping[str, int],
    query: Mapping[str, Mapping[str, str]],
    thumbs: Mapping[str, str],
    class_names: Sequence[str],
    instructions: str,
) -> str:
    esc = html.escape
    cards = []
    for sid in sorted(ids, key=lambda s: ranks[s]):
        img = (
            f'<img src="{thumbs[sid]}" alt="{esc(sid)}">'
            if sid in thumbs
            else '<div class="none">no image</div>'
        )
        extra = []
        row = query.get(sid, {})
        if row.get("u", "").strip():
            extra.append(f"u={esc(row['u'].strip())}")
        if row.get("coarse_cluster", "").strip() not in ("", "-1"):
            extra.append(f"cluster {esc(row['coarse_cluster'].strip())}")
        meta = f"<div>{' · '.join(extra)}</div>" if extra else ""
        cards.append(
            f'<div class="card">{img}<div><b>#{ranks[sid]}</b></div>'
            f'<div class="id">{esc(sid)}</div>{meta}</div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(round_name)} query: {len(ids)} samples</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{esc(round_name)} query: {len(ids)} samples</h1>\n"
        f"<p>Classes: {esc(', '.join(class_names))}</p>\n"
        f'<div class="grid">\n' + "\n".join(cards) + "\n</div>\n"
        f"<h2>What to do</h2><pre>{esc(instructions)}</pre>\n</body></html>\n"
    )
