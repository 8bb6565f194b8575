"""The pieces of a batch hand-off that the human and Label Studio oracles share.

Reading a batch's ``query.csv`` (:func:`_read_query`), the run's earlier batches for a reused
Label Studio project (:func:`run_history`), the model's predictions as pre-annotations
(:func:`read_predictions`), the exact resume command for partial answers (:func:`partial_hint`),
whether sample ids would show a folder name (:func:`reveals_folder`), the contact sheet, and for
geo-referenced chips the batch's footprints (:func:`write_query_geojson`, ``query.geojson``) and
their coordinates (:func:`read_coordinates`), which the contact sheet and the tasks show.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hssal_ray import _csv, _io
from hssal_ray.oracle.labels import PARTIAL_OVERRIDE

logger = logging.getLogger(__name__)

QUERY_FILE = "query.csv"
QUERY_GEOJSON = "query.geojson"
_BATCH_DIR = re.compile(r"^(cold_start|round_\d{3,})$")


def _read_query(round_dir: str) -> dict[str, dict[str, str]]:
    """``query.csv`` rows by sample id (empty if the file is absent or unreadable), with each
    chip's ``coordinates`` from ``query.geojson`` when the batch has one (geo-referenced chips)."""
    path = _io.join(round_dir, QUERY_FILE)
    try:
        if not _io.exists(path):
            return {}
        reader = _csv.read_dicts(_io.read_text(path))
        rows = {row["sample_id"]: row for row in reader if row.get("sample_id")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as e:
        logger.warning("could not read %s (%s); using the order of the ids as ranks", path, e)
        return {}
    for sid, where in read_coordinates(round_dir).items():
        if sid in rows:
            rows[sid]["coordinates"] = where
    return rows


def task_ref(run_name: str, batch: str, rank: int) -> str:
    """The opaque ref people see instead of a sample id (``<run>:<batch>:<rank>``)."""
    return f"{run_name}:{batch}:{rank}"


def _centre(ring: Sequence[Sequence[float]]) -> tuple[float, float]:
    pts = np.asarray(ring[:-1], dtype=np.float64)
    return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def coordinates_text(lon: float, lat: float) -> str:
    """``41.23456 N, 12.34567 E``: a chip centre as people read it (5 decimals, about 1 m)."""
    return f"{abs(lat):.5f} {'N' if lat >= 0 else 'S'}, {abs(lon):.5f} {'E' if lon >= 0 else 'W'}"


def write_query_geojson(round_dir: str, ids: Sequence[str], u: Sequence[float] | None) -> int:
    """``query.geojson`` beside ``query.csv``: the batch's chip footprints (WGS84) with rank,
    uncertainty, the model's guess and its probability (``scores.parquet`` of the round), scene,
    pixel window and CRS, for QGIS. Written only when the run's data are geo-referenced chips
    (``python -m hssal_ray.data.tile``); returns the number of features (0: none written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hssal_ray.data.bootstrap import MANIFEST_FILE
    from hssal_ray.data.geo import feature, read_geo_rows, write_geojson

    run_dir = _parent(round_dir)
    manifest = _io.join(run_dir, MANIFEST_FILE)
    if not ids or not _io.exists(manifest):
        return 0
    fs, p = _io.resolve_fs(manifest)
    info = json.loads((pq.read_schema(p, filesystem=fs).metadata or {}).get(b"hssal_catalog", b"{}"))
    if info.get("kind") != "shards":
        return 0
    rows = pq.read_table(
        p, columns=["sample_id", "source", "row"], filters=[("sample_id", "in", list(ids))], filesystem=fs
    )
    pos = {sid: i for i, sid in enumerate(rows.column("sample_id").to_pylist())}
    ordered = [sid for sid in ids if sid in pos]
    geo = read_geo_rows(info["root"], rows.take(pa.array([pos[s] for s in ordered], pa.int64())))
    if geo is None:
        return 0
    classes = (
        _io.read_json(_io.join(run_dir, "classes.json"))
        if _io.exists(_io.join(run_dir, "classes.json"))
        else []
    )
    guess = read_predictions(round_dir, ordered, classes) if classes else {}
    rank = {sid: i + 1 for i, sid in enumerate(ids)}
    unc = {sid: float(u[i]) for i, sid in enumerate(ids)} if u is not None else {}
    g = geo.to_pylist()

    def features() -> Any:
        for sid, chip in zip(ordered, g, strict=True):
            props = {
                "sample_id": sid,
                "rank": rank[sid],
                "u": unc.get(sid),
                "guess": guess[sid][0] if sid in guess else None,
                "guess_probability": guess[sid][1] if sid in guess else None,
                **{k: chip[k] for k in ("scene", "row_off", "col_off", "crs")},
            }
            yield feature(chip["geometry"], props)

    return write_geojson(_io.join(round_dir, QUERY_GEOJSON), features())


def read_coordinates(round_dir: str) -> dict[str, str]:
    """``sample_id -> "lat N, lon E"`` (chip centre) from the batch's ``query.geojson``; empty when
    it has none or it cannot be read."""
    path = _io.join(round_dir, QUERY_GEOJSON)
    try:
        if not _io.exists(path):
            return {}
        doc = _io.read_json(path)
        out = {}
        for f in doc.get("features", []):
            lon, lat = _centre(f["geometry"]["coordinates"][0])
            out[str(f["properties"]["sample_id"])] = coordinates_text(lon, lat)
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        logger.warning("could not read %s (%s): no coordinates in the hand-off", path, e)
        return {}


def reveals_folder(ids: Any) -> bool:
    """Whether showing these sample ids would show a folder name (on ImageFolder data, the class).

    Args:
        ids: Sample ids: a sequence of str, or an Arrow (chunked) array of strings.
    """
    if hasattr(ids, "type"):  # Arrow: no Python strings for a million ids
        import pyarrow.compute as pc

        return bool(pc.any(pc.match_substring_regex(ids, r"[/\\]")).as_py())
    return any("/" in str(s) or "\\" in str(s) for s in ids)


def partial_hint(run_dir: str, labels: str | None) -> str:
    """The exact way to accept a partial answer, for error messages."""
    cmd = f"python -m hssal_ray.loop --resume {shlex.quote(run_dir)}"
    if labels:
        cmd += f" --labels {shlex.quote(labels)}"
    return (
        f"or go on with the labels given: `{cmd} {PARTIAL_OVERRIDE}` "
        "(the override is saved in the run's config.yaml and applies to the later rounds too)"
    )


def run_history(run_dir: str, current: str) -> tuple[dict[str, str], dict[str, int | None]]:
    """What a reused Label Studio project may hold besides the current batch.

    Args:
        run_dir: The run directory.
        current: The current batch's directory name (``cold_start`` or ``round_003``).

    Returns:
        ``(refs, earlier)``: ``ref -> sample_id`` of every batch of the run (the current one
        included), and ``sample_id -> stored class index`` (``None`` if it was left unanswered) of
        the ids of the other batches.
    """
    from hssal_ray.state import LabeledSet

    run_name = _basename(run_dir)
    refs: dict[str, str] = {}
    earlier_ids: list[str] = []
    for name in _io.listdir(run_dir):
        if not _BATCH_DIR.match(name):
            continue
        rows = _read_query(_io.join(run_dir, name))
        for pos, (sid, row) in enumerate(rows.items(), start=1):
            refs[task_ref(run_name, name, _int_or(row.get("rank"), pos))] = sid
            if name != current:
                earlier_ids.append(sid)
    stored = LabeledSet.load(run_dir).labels() if _io.exists(LabeledSet.path(run_dir)) else {}
    return refs, {sid: stored.get(sid) for sid in earlier_ids}


def read_predictions(
    round_dir: str, ids: Sequence[str], class_names: Sequence[str]
) -> dict[str, tuple[str, float]]:
    """The model's prediction ``sample_id -> (class name, probability)`` from ``scores.parquet``.

    Empty when the round has no scores (the cold start) or they cannot be read (logged).
    """
    import pyarrow.parquet as pq

    path = _io.join(round_dir, "scores.parquet")
    if not ids or not _io.exists(path):
        return {}
    try:
        fs, p = _io.resolve_fs(path)
        names = set(pq.read_schema(_first_part(fs, p), filesystem=fs).names)
        columns = ["sample_id", "probs", *(["pred"] if "pred" in names else [])]
        table = pq.read_table(p, columns=columns, filters=[("sample_id", "in", list(ids))], filesystem=fs)
    except Exception as e:  # noqa: BLE001 - no predictions must not stop the hand-off
        logger.warning("no predictions for the tasks: cannot read %s (%s: %s)", path, type(e).__name__, e)
        return {}
    out: dict[str, tuple[str, float]] = {}
    preds = table.column("pred").to_pylist() if "pred" in table.column_names else None
    for i, (sid, probs) in enumerate(
        zip(table.column("sample_id").to_pylist(), table.column("probs").to_pylist(), strict=True)
    ):
        if not probs:
            continue
        k = int(preds[i]) if preds is not None and preds[i] is not None else int(np.argmax(probs))
        if 0 <= k < len(class_names) and k < len(probs):
            out[sid] = (class_names[k], float(probs[k]))
    return out


def _first_part(fs: Any, p: str) -> str:
    import pyarrow.fs as pafs

    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return p
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    files = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))
    )
    return files[0] if files else p


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
    shown: Mapping[str, str],
) -> str:
    esc = html.escape
    cards = []
    for sid in sorted(ids, key=lambda s: ranks[s]):
        img = (
            f'<img src="{thumbs[sid]}" alt="{esc(shown[sid])}">'
            if sid in thumbs
            else '<div class="none">no image</div>'
        )
        extra = []
        row = query.get(sid, {})
        if row.get("u", "").strip():
            extra.append(f"u={esc(row['u'].strip())}")
        if row.get("coarse_cluster", "").strip() not in ("", "-1"):
            extra.append(f"cluster {esc(row['coarse_cluster'].strip())}")
        if row.get("coordinates"):
            extra.append(esc(row["coordinates"]))
        meta = f"<div>{' · '.join(extra)}</div>" if extra else ""
        cards.append(
            f'<div class="card">{img}<div><b>#{ranks[sid]}</b></div>'
            f'<div class="id">{esc(shown[sid])}</div>{meta}</div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(round_name)} query: {len(ids)} samples</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{esc(round_name)} query: {len(ids)} samples</h1>\n"
        f"<p>Classes: {esc(', '.join(class_names))}</p>\n"
        f'<div class="grid">\n' + "\n".join(cards) + "\n</div>\n"
        f"<h2>What to do</h2><pre>{esc(instructions)}</pre>\n</body></html>\n"
    )
