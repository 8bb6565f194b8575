"""Flatten a Label Studio JSON export into label rows (shape checks only; no validation of values)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["LabelRow", "rows_from_label_studio"]

_LABEL_FROM_NAME = "label"  # the <Choices name="label"> of the label config HumanOracle writes


@dataclass(frozen=True)
class LabelRow:
    """One answer as found in a file, before validation.

    Args:
        where: Human-readable location, e.g. ``line 4`` or ``task #2 (id 17)``.
        sample_id: The id, stripped (``""`` if absent).
        label: The class name or index as written, stripped (``""`` if empty).
        choices: How many classes the annotator chose (more than one is an error).
    """

    where: str
    sample_id: str
    label: str
    choices: int = 1


def rows_from_label_studio(doc: Any) -> tuple[list[LabelRow] | None, list[str]]:
    """Extract ``(sample_id, label)`` rows from a parsed Label Studio export.

    Tasks without a non-cancelled annotation are left out (they are unanswered).

    Args:
        doc: The parsed JSON document.

    Returns:
        ``(rows, problems)``. ``rows`` is ``None`` when the document as a whole has the wrong shape;
        ``problems`` then holds the one reason. Otherwise ``problems`` names each malformed task.
    """
    if not isinstance(doc, list):
        kind = type(doc).__name__ if not isinstance(doc, dict) else "object"
        return None, [f"expected a JSON list of tasks (a Label Studio JSON export), got a JSON {kind}"]
    rows: list[LabelRow] = []
    problems: list[str] = []
    for pos, task in enumerate(doc, start=1):
        where = f"task #{pos}"
        if not isinstance(task, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        if "id" in task and isinstance(task["id"], (int, str)):
            where += f" (id {task['id']})"
        if "data" not in task and "annotations" not in task:
            row = _json_min_row(task, where, problems)
        else:
            row = _full_row(task, where, problems)
        if row is not None:
            rows.append(row)
    return rows, problems


def _sample_id(value: Any, where: str, problems: list[str], key: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        problems.append(f"{where}: no {key} (string)")
        return None
    return str(value).strip()


def _json_min_row(task: dict[str, Any], where: str, problems: list[str]) -> LabelRow | None:
    sid = _sample_id(task.get("sample_id"), where, problems, "sample_id")
    if sid is None:
        return None
    value = task.get(_LABEL_FROM_NAME)
    if value is None:
        return None  # unanswered
    if isinstance(value, dict):
        value = value.get("choices", [])
    if isinstance(value, str):
        return LabelRow(where, sid, value.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return LabelRow(where, sid, value[0].strip() if value else "", max(len(value), 1))
    problems.append(f"{where} (sample_id {sid!r}): '{_LABEL_FROM_NAME}' is not a class name")
    return None


def _full_row(task: dict[str, Any], where: str, problems: list[str]) -> LabelRow | None:
    data = task.get("data")
    if not isinstance(data, dict):
        problems.append(f"{where}: no 'data' object")
        return None
    sid = _sample_id(data.get("sample_id"), where, problems, "data.sample_id")
    if sid is None:
        return None
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        problems.append(f"{where} (sample_id {sid!r}): 'annotations' is not a list of objects")
        return None
    live = [(i, a) for i, a in enumerate(annotations) if not a.get("was_cancelled", False)]
    if not live:
        return None  # unanswered (or every annotation was skipped)
    _, latest = max(live, key=lambda ia: (_timestamp(ia[1]), ia[0]))
    result = latest.get("result", [])
    if not isinstance(result, list):
        problems.append(f"{where} (sample_id {sid!r}): annotation 'result' is not a list")
        return None
    choices: list[Any] = []
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, dict) and "choices" in value:
            if item.get("from_name", _LABEL_FROM_NAME) == _LABEL_FROM_NAME or not choices:
                got = value["choices"]
                choices = got if isinstance(got, list) else [got]
    if not all(isinstance(c, str) for c in choices):
        problems.append(f"{where} (sample_id {sid!r}): choices are not class names")
        return None
    return LabelRow(where, sid, choices[0].strip() if choices else "", max(len(choices), 1))


def _timestamp(annotation: dict[str, Any]) -> datetime:
    for key in ("updated_at", "created_at"):
        raw = annotation.get(key)
        if isinstance(raw, str):
            try:
                ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                continue
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime.min.replace(tzinfo=UTC)
