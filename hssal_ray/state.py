"""Run state: ``state.json`` and ``labeled.parquet``, written atomically after every stage.

A round ``r`` runs the stages ``train -> evaluate -> score -> query -> label``; the last round
stops after ``evaluate``. ``state.json`` always names the *next* stage to run, so a re-run
(after a crash, a SIGKILL or a human hand-off) restarts exactly the first unfinished stage.
Every stage writes its outputs first and advances the state last, and every stage is
idempotent (it overwrites or first removes what a killed attempt may have left).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from hssal_ray import _io
from hssal_ray.errors import StateError

__all__ = ["STAGES", "RECOVER", "RunState", "LabeledSet", "round_dir", "new_run_id"]

STAGES: tuple[str, ...] = ("train", "evaluate", "score", "query", "label")

Status = Literal["running", "awaiting_labels", "done"]


def new_run_id() -> str:
    """A fresh random run identity (128 bits, hex)."""
    return uuid.uuid4().hex


def round_dir(run_dir: str, r: int) -> str:
    """``run_dir/round_003`` for round 3."""
    return _io.join(run_dir, f"round_{r:03d}")


@dataclass
class RunState:
    """The small, atomically written ``state.json``.

    Attributes:
        round: Current round (0 = trained on the cold-start set).
        stage: Next stage to run (``init`` before the cold start, ``done`` at the end).
        status: ``running`` | ``awaiting_labels`` | ``done``.
        config_sha: Hash of the science part of the config the run was started with.
        seed: The run's seed.
        updated: Unix time of the last write.
        history: ``[round, stage, seconds]`` of every finished stage.
        run_id: Random identity of this run, made when the run directory is created; anything
            the run leaves outside its directory (Label Studio tasks) carries it, so two runs
            never take each other's files or annotations for their own.
    """

    round: int = 0
    stage: str = "init"
    status: Status = "running"
    config_sha: str = ""
    seed: int = 0
    updated: float = 0.0
    history: list[list[Any]] = field(default_factory=list)
    run_id: str = ""

    @staticmethod
    def path(run_dir: str) -> str:
        """Where the state file lives."""
        return _io.join(run_dir, "state.json")

    @classmethod
    def load(cls, run_dir: str) -> RunState | None:
        """The run's state, or ``None`` for a new run directory.

        Raises:
            StateError: ``state.json`` is unreadable or not a run state: not a JSON object, a field
                missing or of the wrong type, an unknown stage or status, an empty config hash.
                The message says how to recover.
        """
        p = cls.path(run_dir)
        if not _io.exists(p):
            return None
        try:
            raw = _io.read_json(p)
        except (OSError, ValueError, RecursionError) as e:
            raise StateError(f"{p} is not a valid run state ({_one_line(e)}); {RECOVER}") from None
        problem = _state_problem(raw)
        if problem:
            raise StateError(f"{p} is not a valid run state ({problem}); {RECOVER}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def set_write_guard(self, guard: Callable[[], None] | None) -> None:
        """Call ``guard`` before every save (the run lease's ownership check, which raises when lost)."""
        self.__dict__["_write_guard"] = guard

    def save(self, run_dir: str) -> None:
        """Write ``state.json`` atomically (after the write guard, if one is set)."""
        guard = self.__dict__.get("_write_guard")
        if guard is not None:
            guard()
        self.updated = time.time()
        _io.atomic_write_json(self.path(run_dir), dataclasses.asdict(self))

    def advance(self, run_dir: str, stage: str, seconds: float, *, next_round: bool = False) -> None:
        """Record ``stage`` as finished and move to the next one; saves."""
        self.history.append([self.round, stage, round(seconds, 3)])
        if next_round:
            self.round += 1
            self.stage = STAGES[0]
        elif stage == "init":
            self.stage = STAGES[0]
        else:
            self.stage = STAGES[STAGES.index(stage) + 1]
        self.status = "running"
        self.save(run_dir)


RECOVER = "restore the run directory's files from one backup, or start a new run with another loop.name"
"""How to recover a run directory whose files are unreadable or disagree with each other."""

_REQUIRED: dict[str, tuple[type, ...]] = {
    "round": (int,),
    "stage": (str,),
    "status": (str,),
    "config_sha": (str,),
    "seed": (int,),
    "updated": (int, float),
    "history": (list,),
}
"""Fields every ``state.json`` holds, and their JSON types (``run_id`` may be absent: older runs)."""


def _state_problem(raw: Any) -> str:
    """What makes ``raw`` (a parsed ``state.json``) not a run state; empty when it is one."""
    if not isinstance(raw, dict):
        return f"expected a JSON object, got {type(raw).__name__}"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for k, types in {**_REQUIRED, "run_id": (str,)}.items():
        v = raw.get(k, "")
        if not isinstance(v, types) or isinstance(v, bool):
            return f"{k}: expected {' or '.join(t.__name__ for t in types)}, got {v!r:.40}"
    if raw["round"] < 0:
        return f"round: must be >= 0, got {raw['round']}"
    if raw["stage"] not in ("init", *STAGES, "done"):
        return f"stage: unknown stage {raw['stage']!r:.40}"
    if raw["status"] not in ("running", "awaiting_labels", "done"):
        return f"status: unknown status {raw['status']!r:.40}"
    if (raw["status"] == "done") != (raw["stage"] == "done"):
        return f"status {raw['status']!r} with stage {raw['stage']!r}"
    if raw["status"] == "awaiting_labels" and raw["stage"] not in ("init", "label"):
        return f"status 'awaiting_labels' with stage {raw['stage']!r}"
    if not raw["config_sha"]:
        return "empty config_sha: the run's config identity is gone"
    for i, h in enumerate(raw["history"]):
        ok = (
            isinstance(h, list)
            and len(h) == 3
            and isinstance(h[0], int)
            and isinstance(h[1], str)
            and isinstance(h[2], (int, float))
        )
        if not ok:
            return f"history[{i}]: expected [round, stage, seconds], got {h!r:.60}"
    return ""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class LabeledSet:
    """``labeled.parquet``: ``sample_id`` (string), ``label`` (int32), ``round_added`` (int32), ``source``."""

    SCHEMA = pa.schema(
        [
            ("sample_id", pa.string()),
            ("label", pa.int32()),
            ("round_added", pa.int32()),
            ("source", pa.string()),
        ]
    )

    def __init__(self, table: pa.Table | None = None) -> None:
        self.table = table if table is not None else self.SCHEMA.empty_table()

    @staticmethod
    def path(run_dir: str) -> str:
        """Where the labeled set lives."""
        return _io.join(run_dir, "labeled.parquet")

    @classmethod
    def load(cls, run_dir: str) -> LabeledSet:
        """Load (empty if the file does not exist yet).

        Raises:
            StateError: The file is not a Parquet table of labeled samples (corrupt, truncated or
                of another schema).
        """
        p = cls.path(run_dir)
        if not _io.exists(p):
            return cls()
        try:
            table = _io.read_parquet(p)
            table = table.select([f.name for f in cls.SCHEMA]).cast(cls.SCHEMA)
        except (OSError, ValueError, KeyError, pa.ArrowException) as e:
            raise StateError(f"{p} is not a readable labeled set ({_one_line(e)[:200]}); {RECOVER}") from None
        return cls(table)

    def save(self, run_dir: str) -> None:
        """Write atomically."""
        _io.atomic_write_parquet(self.path(run_dir), self.table)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> list[str]:
        """Labeled sample ids, in the order they were added."""
        return self.table.column("sample_id").to_pylist()

    def labels(self) -> dict[str, int]:
        """``sample_id -> label``."""
        return dict(zip(self.ids, self.table.column("label").to_pylist(), strict=True))

    def with_round(self, r: int, labels: dict[str, int], source: str) -> LabeledSet:
        """A new set with every row of round ``r`` replaced by ``labels`` (idempotent).

        Raises:
            StateError: If an id is already labeled in an earlier round.
        """
        keep = np.asarray(self.table.column("round_added").to_numpy()) != r
        base = self.table.filter(pa.array(keep))
        existing = set(base.column("sample_id").to_pylist())
        dup = [s for s in labels if s in existing]
        if dup:
            raise StateError(f"samples already labeled in an earlier round: {dup[:5]}")
        ids = list(labels)
        add = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "label": pa.array([labels[s] for s in ids], pa.int32()),
                "round_added": pa.array([r] * len(ids), pa.int32()),
                "source": pa.array([source] * len(ids), pa.string()),
            },
            schema=self.SCHEMA,
        )
        return LabeledSet(pa.concat_tables([base, add]))
