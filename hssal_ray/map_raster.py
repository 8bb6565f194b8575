"""The predicted map as GeoTIFF rasters, one per scene, one cell per chip: ``PRED/map/<scene>.tif``.

A prediction of a tiled archive (``python -m hssal_ray.data.tile`` then ``python -m hssal_ray.predict``)
is a table of chips with their pixel windows; what a remote-sensing team hands on is a raster map.
:func:`write_map_rasters` writes, for each scene, a GeoTIFF in the scene's CRS:

* band 1 ``class``: the class id of the chip (uint8, uint16 above 254 classes), a colour table, the
  class names as band tags (``class_0=...``); nodata (255 / 65535) where there is no chip (skipped by
  the tiler for nodata, or unreadable);
* band 2 ``confidence_percent``: the model's top probability in percent (0-100, the same nodata);

and ``PRED/map/legend.csv`` (class id, name, colour). QGIS shows band 1 with its colours.

The grid: chips of ``size`` pixels every ``stride`` pixels (the tiler's settings, read from
``CHIPS/<scene>/.done.json``). Each chip stands for the central ``stride x stride`` block of its
window, so a cell is ``stride`` scene pixels wide and the raster's origin is the scene's moved by
``(size - stride) / 2`` pixels; with the default ``stride = size`` a cell is exactly a chip. The last
chip of a row or column, which the tiler shifts back to end at the scene's edge, fills the next
cell (its footprint is off by less than one stride there).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray import _io
from hssal_ray.errors import StateError

__all__ = ["MAP_DIR", "LEGEND", "grid_index", "cell_transform", "palette", "write_map_rasters", "main"]

log = logging.getLogger(__name__)

MAP_DIR = "map"
"""The rasters' folder in a prediction folder."""
LEGEND = "legend.csv"
"""``class_id, class, red, green, blue`` of every class."""
COLUMNS = [
    "sample_id",
    "class_id",
    "confidence",
    "scene",
    "row_off",
    "col_off",
    "width",
    "height",
    "crs",
    "transform",
]
"""What the rasters are made of (the geo columns ``predict`` writes for tiled archives)."""

# Tableau's 20 colours (distinct, colour-blind-aware ordering of the first 10); beyond 20 classes,
# seeded random colours.
_TAB20 = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` class colours: Tableau's 20, then seeded random ones."""
    rng = np.random.default_rng(0)
    extra = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(max(0, n - len(_TAB20)))]
    return [*_TAB20, *extra][:n]  # type: ignore[list-item]


def grid_index(offsets: np.ndarray, stride: int) -> np.ndarray:
    """The cell of each chip offset: ``ceil(offset / stride)`` (exact on the stride grid; the chip
    the tiler shifted back to the scene's edge takes the cell after the last regular one)."""
    o = np.asarray(offsets, dtype=np.int64)
    return -(-o // int(stride))


def cell_transform(
    chip_transform: Sequence[float], row_off: int, col_off: int, size: int, stride: int
) -> Any:
    """The raster's affine transform (rasterio ``Affine``) from one chip's transform and window."""
    from affine import Affine

    scene = Affine(*chip_transform[:6]) @ Affine.translation(-col_off, -row_off)
    half = (size - stride) / 2
    return scene @ Affine.translation(half, half) @ Affine.scale(stride)


def _tile_settings(data_root: str, scene_id: str) -> tuple[int, int] | None:
    """``(size, stride)`` the tiler recorded for the scene, or None when it cannot be read."""
    from hssal_ray.data.tile import DONE

    path = _io.join(data_root, scene_id, DONE)
    try:
        params = _io.read_json(path).get("params") or {}
        return int(params["size"]), int(params.get("stride") or params["size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _infer_stride(offsets: np.ndarray, size: int) -> int:
    """The most common step between a scene's chip offsets (the last one, maybe shifted, left out)."""
    u = np.unique(np.asarray(offsets))
    steps = np.diff(u[:-1]) if len(u) > 2 else np.array([], dtype=np.int64)
    return int(Counter(steps.tolist()).most_common(1)[0][0]) if len(steps) else int(size)


def write_map_rasters(
    pred_dir: str,
    classes: Sequence[str],
    data_root: str,
    *,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Write ``PRED/map/<scene>.tif`` for every scene of a geo prediction, and ``legend.csv``.

    Args:
        pred_dir: The prediction folder (its ``predictions.parquet`` parts carry the geo columns).
        classes: The class names (index = ``class_id``).
        data_root: The tiled archive (for each scene's chip size and stride).
        progress: Where one line per scene goes.

    Returns:
        ``{"folder", "scenes", "cells", "chips"}``.

    Raises:
        StateError: The parts lack the columns (a prediction from before rasters were written, or
            not of a tiled archive).
    """
    from hssal_ray.prediction_files import PARTS

    parts_dir = _io.join(pred_dir, PARTS)
    names = sorted(n for n in _io.listdir(parts_dir) if n.startswith("part-") and n.endswith(".parquet"))
    tables = []
    for n in names:
        path = _io.join(parts_dir, n)
        missing = [c for c in COLUMNS if c not in _io.parquet_columns(path)]
        if missing:
            raise StateError(
                f"{path} has no {', '.join(missing)}: rasters need a prediction of a tiled archive by this "
                "version of predict (predict again into a new --out folder)"
            )
        tables.append(_io.read_parquet(path, columns=COLUMNS))  # not the footprints, not the top-k
    folder = _io.join(pred_dir, MAP_DIR)
    _io.makedirs(folder)
    colours = palette(len(classes))
    legend = io.StringIO()
    w = csv.writer(legend)
    w.writerow(["class_id", "class", "red", "green", "blue"])
    w.writerows([i, name, *colours[i]] for i, name in enumerate(classes))
    _io.atomic_write_text(_io.join(folder, LEGEND), legend.getvalue())
    if not tables:
        return {"folder": folder, "scenes": 0, "cells": 0, "chips": 0}
    t = pa.concat_tables(tables)
    # scenes by dictionary codes (not a Python string per chip: a million chips stay a few arrays)
    codes = t.column("scene").combine_chunks().dictionary_encode().indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max() + 2))
    cells = scenes = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            cells += _write_scene(folder, t.take(pa.array(order[a:b])), classes, colours, data_root)
            scenes += 1
    progress(f"[hssal] map rasters: {scenes} scene(s), {t.num_rows} chips in {folder}")
    return {"folder": folder, "scenes": scenes, "cells": int(cells), "chips": int(t.num_rows)}


def _write_scene(
    folder: str, rows: pa.Table, classes: Sequence[str], colours: list[tuple[int, int, int]], data_root: str
) -> int:
    """One scene's GeoTIFF; returns its number of cells."""
    from rasterio.crs import CRS
    from rasterio.io import MemoryFile

    first = rows.slice(0, 1).to_pylist()[0]
    scene_id = str(first["sample_id"]).rsplit("/", 1)[0]
    row_off = rows.column("row_off").to_numpy().astype(np.int64)
    col_off = rows.column("col_off").to_numpy().astype(np.int64)
    settings = _tile_settings(data_root, scene_id)
    if settings is None:
        size = int(first["width"])
        stride = _infer_stride(np.concatenate([row_off, col_off]), size)
        log.warning(
            "%s: no tile settings in the archive; chips of %d px every %d px assumed", scene_id, size, stride
        )
    else:
        size, stride = settings
    r, c = grid_index(row_off, stride), grid_index(col_off, stride)
    height, width = int(r.max()) + 1, int(c.max()) + 1
    big = len(classes) > 254
    dtype, nodata = (np.uint16, 65535) if big else (np.uint8, 255)
    cls = np.full((height, width), nodata, dtype=dtype)
    conf = np.full((height, width), nodata, dtype=dtype)  # one nodata value per GeoTIFF
    if len(np.unique(r * width + c)) != len(r):
        raise StateError(f"{scene_id}: two chips fall into one cell (stride {stride} px): not a tiler's grid")
    cls[r, c] = rows.column("class_id").to_numpy().astype(dtype)
    conf[r, c] = np.clip(np.round(rows.column("confidence").to_numpy() * 100), 0, 100).astype(dtype)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 2,
        "dtype": np.dtype(dtype).name,
        "crs": CRS.from_user_input(first["crs"]),
        "transform": cell_transform(first["transform"], first["row_off"], first["col_off"], size, stride),
        "nodata": nodata,
        "compress": "deflate",
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(cls, 1)
            dst.write(conf, 2)
            dst.set_band_description(1, "class")
            dst.set_band_description(2, "confidence_percent")
            dst.update_tags(1, **{f"class_{i}": name for i, name in enumerate(classes)})
            dst.update_tags(scene=str(first["scene"]), chip_size=str(size), chip_stride=str(stride))
            dst.write_colormap(1, {i: (*colours[i], 255) for i in range(len(classes))})
        data = mem.read()
    _io.atomic_write_bytes(_io.join(folder, f"{scene_id.replace('/', '_')}.tif"), data)
    return height * width


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hssal_ray.map_raster PRED``: (re)write the rasters of a finished prediction folder."""
    import argparse
    import sys

    from hssal_ray.errors import HSSALError
    from hssal_ray.prediction_files import SUMMARY

    p = argparse.ArgumentParser(prog="python -m hssal_ray.map_raster", description=main.__doc__)
    p.add_argument("predictions", help="the --out folder of python -m hssal_ray.predict (a tiled archive's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = _io.join(args.predictions, SUMMARY)
        if not _io.exists(meta):
            raise StateError(f"{args.predictions} is not a prediction folder (no {SUMMARY})")
        info = _io.read_json(meta)
        write_map_rasters(args.predictions, info["classes"], info["data"], progress=print)
    except (HSSALError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
