"""The metrics store ``RUN/metrics.jsonl``: one JSON row per evaluated round, rewritten atomically.

The evaluate stage writes a round's row; score, query and label add their wall times and figures
to it (``wall_s.<stage>`` keys land in the row's ``wall_s`` mapping). Ray Tune and the report read
the rows back with :func:`read_metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from hssal_ray import _io
from hssal_ray.errors import StateError
from hssal_ray.state import RECOVER

__all__ = ["METRICS_FILE", "read_metrics", "update_metrics"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (one per evaluated round), in round order.

    Raises:
        StateError: The file is not UTF-8 text, a line is not a JSON object with an integer
            ``round``, or a round has two rows (the message names the line and how to recover).
    """
    p = _io.join(run_dir, METRICS_FILE)
    if not _io.exists(p):
        return []
    try:
        text = _io.read_text(p)
    except (OSError, UnicodeDecodeError) as e:
        raise StateError(f"{p} is unreadable ({type(e).__name__}); {RECOVER}") from None
    rows: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise StateError(f"{p} line {n} is not valid JSON ({type(e).__name__}); {RECOVER}") from None
        r = row.get("round") if isinstance(row, dict) else None
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise StateError(f"{p} line {n} is not a metrics row (no integer 'round'); {RECOVER}")
        if r in rows:
            raise StateError(f"{p} line {n} repeats round {r}; {RECOVER}")
        rows[r] = row
    return [rows[r] for r in sorted(rows)]


def update_metrics(
    run_dir: str,
    r: int,
    values: dict[str, Any],
    replace: bool = False,
    guard: Callable[[], None] | None = None,
) -> None:
    """Merge ``values`` into round ``r``'s row (or replace the row) and rewrite the file atomically.

    Args:
        run_dir: The run directory.
        r: The round.
        values: Fields of the row; ``wall_s.<stage>`` keys go to the row's ``wall_s`` mapping
            (rounded to ms).
        replace: Start the row afresh instead of merging into the stored one.
        guard: Called before writing (the lease check: it raises if the run was taken over).
    """
    if guard is not None:
        guard()
    rows = {m["round"]: m for m in read_metrics(run_dir)}
    row = {} if replace else dict(rows.get(r, {"round": r}))
    for k, v in values.items():
        if k.startswith("wall_s."):
            row.setdefault("wall_s", {})[k.split(".", 1)[1]] = round(float(v), 3)
        else:
            row[k] = v
    if not replace and r in rows:
        row = {**rows[r], **row, "wall_s": {**rows[r].get("wall_s", {}), **row.get("wall_s", {})}}
    rows[r] = row
    text = "".join(json.dumps(rows[k], default=_json_num) + "\n" for k in sorted(rows))
    _io.atomic_write_text(_io.join(run_dir, METRICS_FILE), text)


def _json_num(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o).__name__)
