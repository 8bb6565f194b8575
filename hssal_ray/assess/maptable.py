"""A prediction folder read as a map: every chip's class, sorted by sample id, with its digest, the
chips' ground area and the model's confidence per class (no torch, no Ray)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hssal_ray import _io
from hssal_ray.errors import StateError
from hssal_ray.prediction_files import PART_KEY, PARTS, SUMMARY

__all__ = ["MapTable", "read_map", "chip_area_km2", "class_confidence", "AREA_TOLERANCE"]

log = logging.getLogger(__name__)


class MapTable:
    """Every chip's class in a prediction folder, sorted by sample id.

    Attributes:
        pred_dir: The folder ``python -m hssal_ray.predict`` wrote.
        info: Its ``predict.json``.
        classes: The class names (index = ``class_id``).
        ids: Sample ids (Arrow string array, sorted).
        class_id: The map's class of each (int64).
        parts: The paths of its ``predictions.parquet`` parts.
    """

    def __init__(
        self,
        pred_dir: str,
        info: dict[str, Any],
        classes: list[str],
        ids: pa.Array,
        cls: Any,
        parts: list[str],
    ):
        self.pred_dir = pred_dir
        self.parts = parts
        self.info = info
        self.classes = classes
        self.ids = ids
        self.class_id = np.asarray(cls, dtype=np.int64)

    @property
    def sizes(self) -> np.ndarray:
        """``N_i``: chips per map class."""
        return np.bincount(self.class_id, minlength=len(self.classes)).astype(np.int64)

    def digest(self) -> str:
        """A digest of every (sample id, class) pair: the map the sample was drawn from."""
        h = hashlib.sha256()
        for chunk in range(0, len(self.ids), 100_000):
            h.update("\0".join(self.ids[chunk : chunk + 100_000].to_pylist()).encode())
            h.update(b"\1")
        h.update(self.class_id.astype("<i8").tobytes())
        return h.hexdigest()[:16]


def read_map(pred_dir: str) -> MapTable:
    """Read the map of ``pred_dir`` (``predict.json`` and the ``predictions.parquet`` parts).

    Raises:
        StateError: No finished prediction there: no ``predict.json``, or parts that do not add up to
            it (fewer chips or parts than it counts, or parts by other weights: a predict command that
            was stopped; rerun it, it resumes).
    """
    meta = _io.join(pred_dir, SUMMARY)
    parts = _io.join(pred_dir, PARTS)
    if not _io.exists(meta) or not _io.exists(parts):
        raise StateError(
            f"{pred_dir} is not a finished prediction (no predict.json or {PARTS}/): "
            "run `python -m hssal_ray.predict RUN --data ARCHIVE --out PRED` first"
        )
    info = _io.read_json(meta)
    classes = info.get("classes")
    if not classes:  # a prediction written before predict.json named its classes
        cpath = _io.join(str(info.get("run", "")), "classes.json")
        if not info.get("run") or not _io.exists(cpath):
            raise StateError(
                f"{meta} names no classes and its run's classes.json is not readable: rerun predict"
            )
        classes = _io.read_json(cpath)
    names = [
        _io.join(parts, n)
        for n in sorted(_io.listdir(parts))
        if n.startswith("part-") and n.endswith(".parquet")
    ]
    tables = [_io.read_parquet(n, columns=["sample_id", "class_id"]) for n in names]
    stale = [n for n, t in zip(names, tables, strict=True) if _part_weights(t) != info.get("weights_digest")]
    expected = int(info.get("images", 0)) - int(info.get("bad_samples") or 0)
    rows = sum(t.num_rows for t in tables)
    if stale or len(names) != info.get("chunks") or rows != expected:
        raise StateError(
            f"{pred_dir} is not one finished prediction: {len(names)} parts for {info.get('chunks')} chunks, "
            f"{rows} predictions for {expected} readable images, {len(stale)} parts by other weights than "
            "predict.json's (a predict command that did not finish); rerun the same predict command "
            "(it resumes)"
        )
    if rows == 0:
        raise StateError(f"{pred_dir} holds no predictions")
    t = pa.concat_tables(tables)
    t = t.take(pc.sort_indices(t, sort_keys=[("sample_id", "ascending")]))
    ids = t.column("sample_id").combine_chunks()
    cls = t.column("class_id").to_numpy()
    if (cls < 0).any() or (cls >= len(classes)).any():
        raise StateError(f"{pred_dir}: a class_id is outside the {len(classes)} classes of predict.json")
    return MapTable(str(pred_dir), info, [str(c) for c in classes], ids, cls, names)


def _part_weights(t: pa.Table) -> str | None:
    """The weights' digest a prediction part records (``hssal_ray.predict``'s part tag)."""
    try:
        return json.loads((t.schema.metadata or {}).get(PART_KEY, b"{}")).get("weights")
    except ValueError:
        return None


AREA_TOLERANCE = 0.01
"""Chips count as one size when their ground areas differ by at most this fraction."""


def chip_area_km2(mt: MapTable) -> float | None:
    """The ground area of one chip in km² when every chip of the map has the same (geo-referenced
    chips, within :data:`AREA_TOLERANCE`), else None (areas are then reported in chips only)."""
    from hssal_ray.data.geo import chip_areas_m2

    if not mt.info.get("geo"):
        return None
    cols = ["crs", "transform", "width", "height"]
    areas = []
    for part in mt.parts:
        if not set(cols) <= set(_io.parquet_columns(part)):
            return None  # predicted before the chips' transforms were recorded
        t = _io.read_parquet(part, columns=cols)
        transform = np.asarray(t.column("transform").combine_chunks().flatten()).reshape(-1, 6)
        areas.append(
            chip_areas_m2(
                t.column("crs").to_pylist(),
                transform,
                t.column("width").to_numpy(),
                t.column("height").to_numpy(),
            )
        )
    a = np.concatenate(areas) if areas else np.zeros(0)
    if not len(a) or a.min() <= 0 or a.max() / a.min() - 1 > AREA_TOLERANCE:
        log.info("chips of different ground areas: the areas are reported in chips")
        return None
    return float(a.mean() / 1e6)


def class_confidence(mt: MapTable) -> np.ndarray:
    """Each map class's mean confidence (the model's top probability) over the chips it gives the class."""
    total = np.zeros(len(mt.classes))
    for part in mt.parts:
        t = _io.read_parquet(part, columns=["class_id", "confidence"])
        cls = t.column("class_id").to_numpy()
        total += np.bincount(cls, weights=t.column("confidence").to_numpy(), minlength=len(mt.classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / mt.sizes
