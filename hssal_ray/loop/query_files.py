"""The query batch on disk: ``query.csv`` in ``cold_start/`` or ``round_XXX/``, the oracle's input.

Columns ``sample_id, rank, u, coarse_cluster`` (``u`` and ``coarse_cluster`` empty where the
strategy has none, e.g. the cold start). The label stage reads the ids back from it, so a resumed
run answers exactly the batch that was written. For geo-referenced chips the batch is also written
as ``query.geojson`` (footprints with rank, uncertainty and the model's guess) for QGIS.
"""

from __future__ import annotations

import io
import logging

from hssal_ray import _csv, _io
from hssal_ray.errors import StateError
from hssal_ray.state import RunState, round_dir

__all__ = ["write_query", "read_query_ids", "pending_query"]

QUERY_FILE = "query.csv"
log = logging.getLogger(__name__)


def write_query(d: str, ids: list[str], u: list[float] | None, coarse: list[int] | None) -> None:
    """Atomically write ``d/query.csv`` for ``ids`` in rank order."""
    buf = io.StringIO()
    w = _csv.writer(buf, lineterminator="\n")
    w.writerow(["sample_id", "rank", "u", "coarse_cluster"])
    for i, sid in enumerate(ids):
        w.writerow([sid, i + 1, "" if u is None else f"{u[i]:.6g}", "" if coarse is None else int(coarse[i])])
    _io.atomic_write_text(_io.join(d, QUERY_FILE), buf.getvalue())
    _write_geojson(d, ids, u)


def _write_geojson(d: str, ids: list[str], u: list[float] | None) -> None:
    """``query.geojson`` for geo-referenced chips; a convenience for QGIS, so a failure is logged
    and the loop goes on (``query.csv`` is the batch)."""
    from hssal_ray.oracle._handoff import write_query_geojson

    try:
        n = write_query_geojson(d, ids, u)
    except Exception as e:  # noqa: BLE001 - the batch is query.csv; the map is an extra
        log.warning("no query.geojson for %s: %s: %s", d, type(e).__name__, e)
        return
    if n:
        log.info("query.geojson: %d chip footprints for QGIS in %s", n, d)


def read_query_ids(d: str) -> list[str]:
    """The ids of ``d/query.csv`` in rank order.

    Raises:
        StateError: There is no query file in ``d``.
    """
    p = _io.join(d, QUERY_FILE)
    if not _io.exists(p):
        raise StateError(f"query file missing: {p}")
    return [r["sample_id"] for r in _csv.read_dicts(_io.read_text(p))]


def pending_query(run_dir: str, state: RunState) -> tuple[str, list[str], int]:
    """Directory, ids and ``round_added`` of the batch the oracle must answer now."""
    if state.stage == "init":
        d = _io.join(run_dir, "cold_start")
        return d, read_query_ids(d), 0
    d = round_dir(run_dir, state.round)
    return d, read_query_ids(d), state.round + 1
