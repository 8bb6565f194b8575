"""Load what a report needs from one run directory, tolerating partial or damaged runs."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from hssal_ray import _csv, _io
from hssal_ray.errors import StateError

__all__ = ["RunData", "load_run", "STAGES"]

logger = logging.getLogger(__name__)

STAGES = ("train", "score", "query", "oracle", "eval")
"""Stage order of the ``wall_s`` columns; other stages found in metrics follow in name order."""

_ROUND_DIR = re.compile(r"^round_(\d+)$")


@dataclass
class RunData:
    """Everything the report shows about one run.

    Args:
        path: The run directory as given.
        name: Display name (the directory's base name, made unique among the reported runs).
        strategy: Query strategy (from metrics, else ``config.yaml``), ``"?"`` if unknown.
        state: Parsed ``state.json`` (empty if absent or unreadable).
        class_names: ``classes.json`` (or the names seen in label files if it is missing).
        rounds: Valid ``metrics.jsonl`` rows, one per round, sorted by round.
        queries: ``round -> Counter(class name -> count)`` of each answered query (the final round
            queries nothing and has no entry).
        coverage: ``round -> (coarse clusters covered, coarse_k or None)``.
        warnings: Problems found while reading (malformed lines, unreadable files).
    """

    path: str
    name: str
    strategy: str = "?"
    state: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    queries: dict[int, Counter[str]] = field(default_factory=dict)
    coverage: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record and log a problem with this run's files."""
        logger.warning("%s: %s", self.path, message)
        self.warnings.append(message)

    @property
    def label(self) -> str:
        """Legend label: run name and strategy."""
        return f"{self.name} ({self.strategy})"

    def stages(self) -> list[str]:
        """Stages that have a wall time in any round, in pipeline order."""
        seen = {k for r in self.rounds for k in r.get("wall_s", {})}
        return [s for s in STAGES if s in seen] + sorted(seen.difference(STAGES))


def load_run(path: str, name: str) -> RunData:
    """Read one run directory.

    Args:
        path: Run directory, local path or URI.
        name: Display name for the run.

    Returns:
        The run's data; anything missing or malformed is skipped and recorded in ``warnings``.

    Raises:
        StateError: ``path`` does not exist.
    """
    if not _io.exists(path):
        raise StateError(f"run directory not found: {path}")
    run = RunData(path=path, name=name)
    run.state = _read_json_object(run, "state.json")
    config = _read_config(run)
    run.class_names = _read_classes(run)
    run.rounds = _read_metrics(run)
    strategies = [r["strategy"] for r in run.rounds if isinstance(r.get("strategy"), str)]
    query_cfg = config.get("query") if isinstance(config.get("query"), dict) else {}
    run.strategy = strategies[-1] if strategies else str(query_cfg.get("strategy", "?"))
    _read_queries(run)
    return run


def _read_json_object(run: RunData, name: str) -> dict[str, Any]:
    path = _io.join(run.path, name)
    if not _io.exists(path):
        return {}
    try:
        obj = _io.read_json(path)
    except (OSError, ValueError) as e:
        run.warn(f"cannot read {name}: {e}")
        return {}
    if not isinstance(obj, dict):
        run.warn(f"{name} is not a JSON object")
        return {}
    return obj


def _read_config(run: RunData) -> dict[str, Any]:
    path = _io.join(run.path, "config.yaml")
    if not _io.exists(path):
        return {}
    try:
        cfg = yaml.safe_load(_io.read_text(path))
    except (OSError, ValueError, yaml.YAMLError) as e:
        run.warn(f"cannot read config.yaml: {e}")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _read_classes(run: RunData) -> list[str]:
    path = _io.join(run.path, "classes.json")
    if not _io.exists(path):
        return []
    try:
        names = _io.read_json(path)
    except (OSError, ValueError) as e:
        run.warn(f"cannot read classes.json: {e}")
        return []
    if not isinstance(names, list):
        run.warn("classes.json is not a list of class names")
        return []
    return [str(n) for n in names]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_metrics(run: RunData) -> list[dict[str, Any]]:
    path = _io.join(run.path, "metrics.jsonl")
    if not _io.exists(path):
        return []
    try:
        text = _io.read_bytes(path).decode("utf-8", errors="replace")
    except OSError as e:
        run.warn(f"cannot read metrics.jsonl: {e}")
        return []
    by_round: dict[int, dict[str, Any]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            run.warn(f"metrics.jsonl line {lineno}: not valid JSON, skipped")
            continue
        problem = _check_metrics_row(row)
        if problem:
            run.warn(f"metrics.jsonl line {lineno}: {problem}, skipped")
            continue
        r = int(row["round"])
        if r in by_round:
            run.warn(f"metrics.jsonl line {lineno}: round {r} appears again; the last one is kept")
        wall = row.get("wall_s")
        row["wall_s"] = (
            {str(k): float(v) for k, v in wall.items() if _number(v) is not None}
            if isinstance(wall, dict)
            else {}
        )
        by_round[r] = row
    return [by_round[r] for r in sorted(by_round)]


def _check_metrics_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("round"), int) or isinstance(row.get("round"), bool):
        return "no integer 'round'"
    for key in ("num_labeled", "test_accuracy"):
        if _number(row.get(key)) is None:
            return f"no numeric {key!r}"
    return None


def _read_queries(run: RunData) -> None:
    """Fill ``run.queries`` and ``run.coverage`` from round directories and ``labeled.parquet``."""
    round_dirs = {int(m.group(1)): n for n in _io.listdir(run.path) if (m := _ROUND_DIR.match(n))}
    by_parquet = _parquet_queries(run)
    final = {int(m["round"]) for m in run.rounds if m.get("final") is True}
    for r in sorted(set(round_dirs) | set(by_parquet)):
        names = _labels_csv(run, round_dirs[r]) if r in round_dirs else None
        counts = names or by_parquet.get(r)
        if counts and r not in final:
            run.queries[r] = counts
    metric_cov = {
        int(m["round"]): (int(m["coarse_clusters_covered"]), _int_or_none(m.get("coarse_k")))
        for m in run.rounds
        if _number(m.get("coarse_clusters_covered")) is not None
    }
    for r, dirname in sorted(round_dirs.items()):
        if r not in metric_cov:
            covered = _query_clusters(run, dirname)
            if covered is not None:
                k = next((_int_or_none(m.get("coarse_k")) for m in run.rounds if m["round"] == r), None)
                run.coverage[r] = (covered, k)
    run.coverage.update(metric_cov)
    run.coverage = dict(sorted(run.coverage.items()))


def _int_or_none(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _csv_rows(run: RunData, rel: str) -> list[dict[str, str]] | None:
    path = _io.join(run.path, rel)
    if not _io.exists(path):
        return None
    try:
        text = _io.read_bytes(path).decode("utf-8-sig")
        return _csv.read_dicts(text)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        run.warn(f"cannot read {rel}: {e}")
        return None


def _labels_csv(run: RunData, dirname: str) -> Counter[str] | None:
    rows = _csv_rows(run, f"{dirname}/labels.csv")
    if rows is None:
        return None
    counts: Counter[str] = Counter()
    for row in rows:
        label = (row.get("label") or "").strip()
        if label:
            counts[_class_name(run, label)] += 1
    return counts


def _class_name(run: RunData, label: str) -> str:
    if label not in run.class_names and label.isdigit() and int(label) < len(run.class_names):
        return run.class_names[int(label)]
    return label


def _query_clusters(run: RunData, dirname: str) -> int | None:
    rows = _csv_rows(run, f"{dirname}/query.csv")
    if not rows:
        return None
    clusters = set()
    for row in rows:
        raw = (row.get("coarse_cluster") or "").strip()
        try:
            c = int(float(raw))
        except ValueError:
            continue
        if c >= 0:
            clusters.add(c)
    return len(clusters) or None


def _parquet_queries(run: RunData) -> dict[int, Counter[str]]:
    """``round -> class counts`` of the answers stored in ``labeled.parquet``.

    The loop stores round ``r``'s answers with ``round_added = r + 1`` (they are part of the next
    round's training set); ``round_added = 0`` is the cold start, which is no round's query.
    """
    path = _io.join(run.path, "labeled.parquet")
    if not _io.exists(path):
        return {}
    try:
        table = _io.read_parquet(path).to_pydict()
        labels, rounds = table["label"], table["round_added"]
        sources = table.get("source", ["oracle"] * len(labels))
    except (OSError, ValueError, KeyError) as e:
        run.warn(f"cannot read labeled.parquet: {e}")
        return {}
    out: dict[int, Counter[str]] = {}
    for label, r, source in zip(labels, rounds, sources, strict=True):
        if source == "seed" or label is None or r is None or int(r) < 1:
            continue
        out.setdefault(int(r) - 1, Counter())[_class_name(run, str(label))] += 1
    return out
