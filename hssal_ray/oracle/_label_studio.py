"""Flatten a Label Studio export (or the tasks the REST API returns) into label rows.

Shape checks only; the values are validated by :mod:`hssal_ray.oracle.labels`. Two shapes:

* the full ``JSON`` export (and ``GET /api/tasks``): one object per task with ``data`` and a list of
  ``annotations``; every annotation that is not cancelled (``was_cancelled``) is one answer;
* the flat ``JSON_MIN`` export: one object per *annotation* with the task's data fields and the
  ``label`` choice at the top level (a task without annotation is one object without ``label``).

A task is identified by ``sample_id`` or, when the run hides sample ids from annotators, by the
opaque ``ref`` the hand-off wrote (``<run>:<batch>:<rank>``, resolved back through the run's query
files).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LabelRow", "RowStatus", "rows_from_label_studio", "LABEL_FROM_NAME"]

LABEL_FROM_NAME = "label"
"""The ``<Choices name="label">`` of the label config the hand-off writes."""

RowStatus = Literal["answered", "skipped", "unanswered", "conflict"]


@dataclass(frozen=True)
class LabelRow:
    """One answer as found in a file, before validation.

    Args:
        where: Human-readable location, e.g. ``line 4`` or ``task #2 (id 17)``.
        sample_id: The id, stripped (``""`` if absent or hidden behind ``ref``).
        label: The class name or index as written, stripped (``""`` if empty).
        choices: How many classes the annotator chose (more than one is an error).
        status: ``answered``; ``skipped`` (only cancelled annotations); ``unanswered`` (no
            annotation); ``conflict`` (annotations of one task that disagree, see ``detail``).
        ref: The task's opaque reference (hidden sample ids), ``""`` if absent.
        detail: For a conflict: the disagreeing labels and where they are.
    """

    where: str
    sample_id: str
    label: str
    choices: int = 1
    status: RowStatus = "answered"
    ref: str = ""
    detail: str = ""


def rows_from_label_studio(doc: Any) -> tuple[list[LabelRow] | None, list[str], str]:
    """Extract ``(sample_id, label)`` rows from a parsed Label Studio export.

    Args:
        doc: The parsed JSON document.

    Returns:
        ``(rows, problems, format)``. ``rows`` is ``None`` when the document as a whole has the wrong
        shape; ``problems`` then holds the one reason. Otherwise ``problems`` names each malformed
        task. ``format`` is ``Label Studio JSON`` or ``Label Studio JSON-MIN``.
    """
    if not isinstance(doc, list):
        kind = type(doc).__name__ if not isinstance(doc, dict) else "object"
        return (
            None,
            [f"expected a JSON list of tasks (a Label Studio JSON export), got a JSON {kind}"],
            "JSON",
        )
    rows: list[LabelRow] = []
    problems: list[str] = []
    full = any(isinstance(t, dict) and ("data" in t or "annotations" in t) for t in doc)
    for pos, task in enumerate(doc, start=1):
        where = f"task #{pos}" if full else f"entry #{pos}"
        if not isinstance(task, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        if "id" in task and isinstance(task["id"], (int, str)) and not isinstance(task["id"], bool):
            where += f" (id {task['id']})" if full else f" (task {task['id']})"
        if "data" not in task and "annotations" not in task:
            row = _json_min_row(task, where, problems)
        else:
            row = _full_row(task, where, problems)
        if row is not None:
            rows.append(row)
    return rows, problems, "Label Studio JSON" if full else "Label Studio JSON-MIN"


def _key(fields: dict[str, Any], where: str, problems: list[str], prefix: str) -> tuple[str, str] | None:
    """``(sample_id, ref)`` of a task's data (one of them may be ``""``), or ``None`` (a problem)."""
    out = []
    for key in ("sample_id", "ref"):
        value = fields.get(key)
        if value is None or value == "":
            out.append("")
        elif isinstance(value, bool) or not isinstance(value, (str, int)):
            problems.append(f"{where}: {prefix}{key} is not a string")
            return None
        else:
            out.append(str(value).strip())
    if not out[0] and not out[1]:
        problems.append(f"{where}: no {prefix}sample_id (string)")
        return None
    return out[0], out[1]


def _json_min_row(task: dict[str, Any], where: str, problems: list[str]) -> LabelRow | None:
    key = _key(task, where, problems, "")
    if key is None:
        return None
    sid, ref = key
    tag = f"{where} ({_name(sid, ref)})"
    if task.get("was_cancelled") is True:
        return LabelRow(where, sid, "", status="skipped", ref=ref)
    value = task.get(LABEL_FROM_NAME)
    if value is None:
        return LabelRow(where, sid, "", status="unanswered", ref=ref)
    if isinstance(value, dict):
        value = value.get("choices", [])
    if isinstance(value, str):
        return LabelRow(where, sid, value.strip(), ref=ref)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return LabelRow(where, sid, value[0].strip() if value else "", max(len(value), 1), ref=ref)
    problems.append(f"{tag}: '{LABEL_FROM_NAME}' is not a class name")
    return None


def _name(sid: str, ref: str) -> str:
    return f"sample_id {sid!r}" if sid else f"ref {ref!r}"


def _full_row(task: dict[str, Any], where: str, problems: list[str]) -> LabelRow | None:
    data = task.get("data")
    if not isinstance(data, dict):
        problems.append(f"{where}: no 'data' object")
        return None
    key = _key(data, where, problems, "data.")
    if key is None:
        return None
    sid, ref = key
    tag = f"{where} ({_name(sid, ref)})"
    annotations = task.get("annotations", [])
    if annotations is None:
        annotations = []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        problems.append(f"{tag}: 'annotations' is not a list of objects")
        return None
    live = [a for a in annotations if not a.get("was_cancelled", False)]
    if not live:
        status: RowStatus = "skipped" if annotations else "unanswered"
        return LabelRow(where, sid, "", status=status, ref=ref)
    answers: list[tuple[list[str], str]] = []
    for pos, annotation in enumerate(live, start=1):
        choices = _choices(annotation.get("result", []))
        if choices is None:
            problems.append(f"{tag}: annotation 'result' is not a list of choices of class names")
            return None
        aid = annotation.get("id")
        answers.append((choices, f"annotation {aid}" if isinstance(aid, int) else f"annotation #{pos}"))
    distinct = {tuple(c) for c, _ in answers}
    if len(distinct) > 1:
        detail = ", ".join(f"{'+'.join(c) or '(empty)'!r} ({who})" for c, who in answers)
        return LabelRow(where, sid, "", status="conflict", ref=ref, detail=detail)
    choices = answers[0][0]
    return LabelRow(where, sid, choices[0].strip() if choices else "", max(len(choices), 1), ref=ref)


def _choices(result: Any) -> list[str] | None:
    """The chosen classes of one annotation's ``result`` (``None`` if it has the wrong shape)."""
    if not isinstance(result, list):
        return None
    choices: list[Any] = []
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, dict) and "choices" in value:
            if item.get("from_name", LABEL_FROM_NAME) == LABEL_FROM_NAME or not choices:
                got = value["choices"]
                choices = got if isinstance(got, list) else [got]
    if not all(isinstance(c, str) for c in choices):
        return None
    return [c.strip() for c in choices]
