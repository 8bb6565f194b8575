"""Cut GeoTIFF scenes into chips: ``python -m hssal_ray.data.tile SCENES... --out SHARDS``.

Options: ``--size 256 --stride 256 --max-nodata 0.25 --classes a,b,c --label-rasters ... --local``.

Every chip becomes a row of the project's Parquet shards (:mod:`hssal_ray.data.shard`): ``image``
holds the chip as an uncompressed TIFF with *all* the scene's bands in its own dtype (16-bit,
N-band: nothing is stretched or dropped; the loop picks and scales bands at decode time with
``data.band_select`` / ``data.value_range``), and the geo columns of :data:`hssal_ray.data.geo.GEO_FIELDS`
say where it is: scene, pixel window, CRS, affine transform, bounds in the scene's CRS and in WGS84,
nodata fraction and the WGS84 footprint (the shards are GeoParquet files too: QGIS opens them).
``sample_id`` is ``<scene>/<row_off>_<col_off>`` (zero-padded pixel offsets), stable across reruns.

Reading: rasterio windowed reads, one strip of chip rows at a time (memory: one ``size``-high
strip of the scene plus one shard of chips), so a scene far larger than memory tiles. rasterio
rather than torchgeo's samplers: torchgeo's ``GridGeoSampler`` yields chips in map coordinates of
a mosaic dataset (reprojecting scenes to one CRS and resolution) and needs an R-tree index of the
whole archive first; here every chip stays on its scene's own pixel grid (no resampling of the
16-bit values), which is what a per-scene Ray task wants.

Nodata: a pixel is nodata when any band is masked (GDAL's per-band masks: the nodata value, an
alpha band or an internal mask); chips whose nodata fraction is above ``--max-nodata`` are skipped
and counted. The last chip of a row or column is shifted back to the scene's edge when the stride
grid stops short of it (:func:`hssal_ray.data.geo.chip_offsets`).

Labels (optional): ``--classes a,b,c`` names the classes (written in the shards' metadata, so a
human oracle has them); with ``--label-rasters`` (one per scene, same grid) each chip's label is
the majority class index among the valid pixels of its window (for the simulated oracle and for
evaluation); without them labels are -1 (unknown).

Ray: one task per scene (``--local`` runs them in this process). Resumable: each scene's shards
are written atomically under ``OUT/<scene>/`` and the scene's ``.done.json`` marker (with the
settings used) last; a rerun skips scenes with a marker and redoes the others from scratch; a
rerun with other settings (size, stride, threshold, classes, labels) into the same folder is
refused. Progress: a tqdm bar on a terminal and a log line per finished scene with the rate and
the ETA.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hssal_ray import _io
from hssal_ray._progress import duration
from hssal_ray.data._shard_index import CLASSES_KEY
from hssal_ray.data.geo import GEO_FIELDS, bbox_of, chip_geometry, chip_offsets, geoparquet_metadata
from hssal_ray.data.shard import SHARD_SCHEMA
from hssal_ray.errors import DataError, HSSALError

__all__ = ["TILE_SCHEMA", "SceneReport", "scene_ids", "tile_scene", "tile", "main"]

log = logging.getLogger(__name__)

TILE_SCHEMA = pa.schema([*SHARD_SCHEMA, *GEO_FIELDS])
DONE = ".done.json"
GDAL_CACHE_MB = 128
_ROW_GROUP = 32


@dataclasses.dataclass(frozen=True)
class SceneReport:
    """What :func:`tile_scene` did with one scene."""

    scene: str
    scene_id: str
    chips: int
    skipped_nodata: int
    shards: int
    seconds: float
    resumed: bool = False


def scene_ids(scenes: Sequence[str]) -> list[str]:
    """Folder names of the scenes: their file stems (sanitised), with a hash suffix when two collide."""
    stems = [
        re.sub(r"[^A-Za-z0-9._-]", "_", s.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]) for s in scenes
    ]
    stems = [s.lstrip(".") or "scene" for s in stems]
    out = []
    for scene, stem in zip(scenes, stems, strict=True):
        if stems.count(stem) > 1:
            stem = f"{stem}-{hashlib.blake2b(scene.encode(), digest_size=4).hexdigest()}"
        out.append(stem)
    return out


def _encode_chip(chip: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    if chip.shape[0] == 1:
        tifffile.imwrite(buf, chip[0], photometric="minisblack")
    else:
        tifffile.imwrite(buf, chip, photometric="minisblack", planarconfig="separate")
    return buf.getvalue()


def _majority(labels: np.ndarray, valid: np.ndarray, n_classes: int) -> int:
    v = labels[valid & (labels >= 0) & (labels < n_classes)]
    if v.size == 0:
        return -1
    return int(np.bincount(v.astype(np.int64), minlength=n_classes).argmax())


def _write_shard(path: str, rows: list[dict[str, Any]], classes: Sequence[str] | None) -> None:
    table = pa.Table.from_pylist(rows, schema=TILE_SCHEMA)
    meta = geoparquet_metadata(bbox_of(r["bounds_wgs84"] for r in rows))
    if classes is not None:
        meta[CLASSES_KEY.encode()] = json.dumps(list(classes)).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink, row_group_size=_ROW_GROUP, compression="zstd")
    _io.atomic_write_bytes(path, sink.getvalue().to_pybytes())


def tile_scene(
    scene: str,
    out: str,
    scene_id: str,
    *,
    size: int = 256,
    stride: int | None = None,
    max_nodata: float = 0.25,
    label_raster: str | None = None,
    classes: Sequence[str] | None = None,
    rows_per_shard: int = 1000,
) -> SceneReport:
    """Tile one scene into ``out/<scene_id>/shard-NNNNN.parquet`` (see the module docstring).

    Raises:
        DataError: The scene (or its label raster) cannot be opened or read, or the label raster's
            grid differs from the scene's.
    """
    import rasterio
    from rasterio.windows import Window

    t0 = time.perf_counter()
    stride = stride or size
    folder = _io.join(out, scene_id)
    params = {
        "scene": scene,
        "size": size,
        "stride": stride,
        "max_nodata": max_nodata,
        "label_raster": label_raster,
        "classes": list(classes) if classes is not None else None,
    }
    if _io.exists(_io.join(folder, DONE)):
        done = _io.read_json(_io.join(folder, DONE))
        if done.get("params") != params:
            raise DataError(
                f"{folder} was tiled with other settings ({done.get('params')}, now {params}): "
                "tile into another --out folder, or delete that scene's folder to redo it"
            )
        return SceneReport(**{k: v for k, v in done.items() if k != "params"}, seconds=0.0, resumed=True)
    if _io.exists(folder):  # an interrupted earlier attempt: its shards may be incomplete
        _io.remove(folder)
    n_classes = len(classes) if classes is not None else 0
    rows: list[dict[str, Any]] = []
    chips = skipped = shards = 0
    try:
        with contextlib.ExitStack() as stack:
            # Each strip is read once: a small GDAL block cache keeps a tile worker's memory flat.
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
            src = stack.enter_context(rasterio.open(scene))
            lab = stack.enter_context(rasterio.open(label_raster)) if label_raster else None
            if src.crs is None:
                raise DataError(f"scene {scene} has no CRS: only geo-referenced scenes can be tiled")
            if lab is not None and (lab.width, lab.height, lab.transform) != (
                src.width,
                src.height,
                src.transform,
            ):
                raise DataError(f"label raster {label_raster} is not on the grid of scene {scene}")
            cols = chip_offsets(src.width, size, stride)
            for row_off in chip_offsets(src.height, size, stride):
                strip_win = Window(0, row_off, src.width, size)
                strip = src.read(window=strip_win)
                valid = src.read_masks(window=strip_win).min(axis=0) > 0
                lab_strip = lab.read(1, window=strip_win) if lab is not None else None
                lab_ok = lab.read_masks(1, window=strip_win) > 0 if lab is not None else None
                for col_off in cols:
                    v = valid[:, col_off : col_off + size]
                    frac = 1.0 - float(v.mean())
                    if frac > max_nodata:
                        skipped += 1
                        continue
                    label = -1
                    if lab_strip is not None:
                        sl = np.s_[:, col_off : col_off + size]
                        label = _majority(lab_strip[sl], lab_ok[sl] & v, n_classes)
                    geo = chip_geometry(src.transform, src.crs, row_off, col_off, size, size)
                    rows.append(
                        {
                            "sample_id": f"{scene_id}/{row_off:06d}_{col_off:06d}",
                            "image": _encode_chip(
                                np.ascontiguousarray(strip[:, :, col_off : col_off + size])
                            ),
                            "label": label,
                            "class_name": classes[label] if label >= 0 and classes is not None else None,
                            "scene": scene,
                            "nodata_fraction": frac,
                            **geo,
                        }
                    )
                    chips += 1
                    if len(rows) == rows_per_shard:
                        _write_shard(_io.join(folder, f"shard-{shards:05d}.parquet"), rows, classes)
                        shards, rows = shards + 1, []
            if rows:
                _write_shard(_io.join(folder, f"shard-{shards:05d}.parquet"), rows, classes)
                shards += 1
    except HSSALError:
        raise
    except Exception as e:  # rasterio/GDAL errors on a missing, truncated or non-raster file
        raise DataError(f"cannot tile scene {scene}: {type(e).__name__}: {e}") from e
    report = SceneReport(scene, scene_id, chips, skipped, shards, time.perf_counter() - t0)
    done = {k: v for k, v in dataclasses.asdict(report).items() if k not in ("seconds", "resumed")}
    done["params"] = params
    _io.atomic_write_json(_io.join(folder, DONE), done)
    return report


def tile(
    scenes: Sequence[str],
    out: str,
    *,
    size: int = 256,
    stride: int | None = None,
    max_nodata: float = 0.25,
    label_rasters: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    rows_per_shard: int = 1000,
    local: bool = False,
    resources: Any = None,
) -> list[SceneReport]:
    """Tile every scene (a Ray task each unless ``local``); returns one report per scene, in order."""
    if size < 8 or (stride is not None and stride < 1):
        raise ValueError(f"size must be >= 8 and stride >= 1, got {size}, {stride}")
    if not 0.0 <= max_nodata <= 1.0:
        raise ValueError(f"max_nodata must be in [0, 1], got {max_nodata}")
    if label_rasters is not None and len(label_rasters) != len(scenes):
        raise ValueError(f"{len(label_rasters)} label rasters for {len(scenes)} scenes: give one per scene")
    if label_rasters is not None and not classes:
        raise ValueError("--label-rasters needs --classes (the class name of each raster value)")
    if not scenes:
        raise ValueError("no scene given")
    ids = scene_ids(scenes)
    _io.makedirs(out)
    kw = dict(size=size, stride=stride, max_nodata=max_nodata, classes=classes, rows_per_shard=rows_per_shard)
    labels = list(label_rasters) if label_rasters is not None else [None] * len(scenes)
    reports: dict[int, SceneReport] = {}
    progress = _Progress(len(scenes))
    if local:
        for i, (s, sid, lr) in enumerate(zip(scenes, ids, labels, strict=True)):
            reports[i] = tile_scene(s, out, sid, label_raster=lr, **kw)
            progress.scene(reports[i])
    else:
        import ray

        from hssal_ray._ray import ensure_ray

        ensure_ray(resources)
        task = ray.remote(num_cpus=1, max_retries=2)(tile_scene)
        pending = {
            task.remote(s, out, sid, label_raster=lr, **kw): i
            for i, (s, sid, lr) in enumerate(zip(scenes, ids, labels, strict=True))
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    reports[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the task's own error, as one line
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, HSSALError):
                        raise cause from None
                    raise
                progress.scene(reports[i])
    progress.close()
    return [reports[i] for i in range(len(scenes))]


class _Progress:
    """A tqdm bar over scenes on a terminal, and one log line per scene with the rate and the ETA."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.total, self.done, self.chips, self.t0 = total, 0, 0, time.perf_counter()
        self.bar = tqdm(total=total, unit="scene", desc="tile", file=sys.stderr, disable=None)

    def scene(self, r: SceneReport) -> None:
        self.done += 1
        self.chips += r.chips
        self.bar.update(1)
        dt = time.perf_counter() - self.t0
        eta = dt / self.done * (self.total - self.done)
        how = "already tiled" if r.resumed else f"{r.chips} chips, {r.skipped_nodata} skipped (nodata)"
        log.info(
            "tile: scene %d/%d %s: %s; %.1f chips/s, ETA %s",
            self.done,
            self.total,
            r.scene_id,
            how,
            self.chips / dt if dt > 0 else 0.0,
            duration(eta),
        )

    def close(self) -> None:
        self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    from hssal_ray.config import ResourcesConfig

    p = argparse.ArgumentParser(prog="python -m hssal_ray.data.tile", description=__doc__.split("\n\n")[0])
    p.add_argument("scenes", nargs="+", help="GeoTIFF scenes (local paths or URIs GDAL reads, e.g. s3://...)")
    p.add_argument("--out", required=True, help="output folder of the shards (local path or URI)")
    p.add_argument("--size", type=int, default=256, help="chip side in pixels (default 256)")
    p.add_argument("--stride", type=int, default=None, help="pixels between chips (default: --size)")
    p.add_argument(
        "--max-nodata", type=float, default=0.25, help="skip chips with more nodata than this (default 0.25)"
    )
    p.add_argument("--classes", default=None, help="comma-separated class names (index = label value)")
    p.add_argument("--label-rasters", nargs="+", default=None, help="one class-index raster per scene")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="chips per shard file (default 1000)")
    p.add_argument("--local", action="store_true", help="tile in this process (no Ray)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: a local runtime)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray runtime")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        reports = tile(
            args.scenes,
            args.out,
            size=args.size,
            stride=args.stride,
            max_nodata=args.max_nodata,
            label_rasters=args.label_rasters,
            classes=classes,
            rows_per_shard=args.rows_per_shard,
            local=args.local,
            resources=ResourcesConfig(address=args.address, num_cpus=args.num_cpus),
        )
    except (HSSALError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chips = sum(r.chips for r in reports)
    skipped = sum(r.skipped_nodata for r in reports)
    print(
        f"tiled {len(reports)} scene(s) into {chips} chips at {args.out} "
        f"({skipped} skipped: nodata above {args.max_nodata:g})"
    )
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: Ray pickles classes and functions of
    # __main__ by value (with their globals), those of an importable module by reference.
    from hssal_ray.data.tile import main as _main

    sys.exit(_main())
