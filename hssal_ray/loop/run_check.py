"""Whether ``state.json`` agrees with the rest of the run directory, checked before every stage.

Every stage writes its outputs before it advances ``state.json`` (see :mod:`hssal_ray.state`), so
at a stage boundary, and after a crash at any point, a run directory satisfies:

* ``labeled.parquet``: labels were added up to round ``state.round`` once the cold start is
  answered (round ``r``'s label stage adds ``round_added = r + 1``, so one round more is allowed
  while the stage is ``label``), and never beyond;
* ``metrics.jsonl``: a row for every round before ``state.round``, one for ``state.round`` once it is
  evaluated (stage ``score``, ``query``, ``label`` or ``done``), and none beyond;
* ``round_XXX`` folders: none beyond ``state.round``;
* without ``state.json``: none of the above (the state is written when the run is created, before
  any stage runs).

A run directory that breaks one of these had a file deleted, emptied or restored from another
moment. Going on would relabel samples or write rows over a history that is gone, so the run is
refused with a :class:`~hssal_ray.errors.StateError` that names what disagrees and how to recover;
nothing is rebuilt (the evaluation rows of a deleted ``metrics.jsonl`` need the old rounds'
checkpoints and cannot be told apart from a restored older copy).
"""

from __future__ import annotations

import re

import pyarrow.compute as pc

from hssal_ray import _io
from hssal_ray.errors import StateError
from hssal_ray.loop.metrics import METRICS_FILE, read_metrics
from hssal_ray.state import RECOVER, LabeledSet, RunState

__all__ = ["check_run_dir"]

LABELED_FILE = "labeled.parquet"
_ROUND_DIR = re.compile(r"^round_(\d{3,})$")
_EVALUATED = ("score", "query", "label", "done")  # stages after the current round's evaluation


def check_run_dir(run_dir: str, state: RunState | None) -> None:
    """Refuse a run directory whose ``state.json`` disagrees with its other files.

    Args:
        run_dir: The run directory.
        state: Its state (``None``: there is no ``state.json``).

    Raises:
        StateError: One line naming the files that disagree and how to recover.
    """
    names = set(_io.listdir(run_dir))
    rounds_on_disk = sorted(int(m.group(1)) for n in names if (m := _ROUND_DIR.match(n)))
    metrics = read_metrics(run_dir) if METRICS_FILE in names else []
    labeled = LabeledSet.load(run_dir) if LABELED_FILE in names else None
    if state is None:
        found = [n for n in (LABELED_FILE, "cold_start") if n in names]
        found += [METRICS_FILE] if metrics else []
        found += [f"round_{r:03d}" for r in rounds_on_disk[:3]]
        if found:
            raise StateError(
                f"run directory {run_dir} has no state.json but holds {', '.join(found)}: its state is "
                f"gone (deleted or emptied); {RECOVER}"
            )
        return
    r, stage = state.round, state.stage
    at = f"state.json is at round {r} (stage {stage})"
    problems: list[str] = []
    if labeled is not None and len(labeled):
        added = pc.max(labeled.table.column("round_added")).as_py()
        if added > r + (stage == "label"):
            problems.append(f"labeled.parquet holds labels added in round {added}")
    else:
        added = None
    if stage != "init" and (added is None or added < r):
        have = "no labels" if added is None else f"labels up to round {added}"
        problems.append(f"labeled.parquet holds {have}")
    have_rows = {m["round"] for m in metrics}
    need_rows = set(range(r + (stage in _EVALUATED)))
    if need_rows - have_rows:
        gone = sorted(need_rows - have_rows)
        problems.append(f"{METRICS_FILE} lacks the rows of evaluated round(s) {_listed(gone)}")
    beyond = sorted(have_rows - set(range(r + 1)))
    if beyond:
        problems.append(f"{METRICS_FILE} has rows of later round(s) {_listed(beyond)}")
    later = [d for d in rounds_on_disk if d > r]
    if later:
        problems.append(f"folder(s) of later rounds exist ({_listed([f'round_{d:03d}' for d in later])})")
    if problems:
        raise StateError(
            f"run directory {run_dir} is inconsistent: {at}, but {'; '.join(problems)} "
            f"(a file was deleted or restored from another moment); {RECOVER}"
        )


def _listed(items: list[object]) -> str:
    shown = ", ".join(str(i) for i in items[:5])
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")
