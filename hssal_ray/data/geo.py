"""Geo-referenced chips: windows over a scene, their footprints, and GeoParquet/GeoJSON output.

Pure numpy/pyarrow except :func:`chip_geometry`, which uses rasterio (GDAL/PROJ) for the affine
transforms and the reprojection of the corners to WGS84. A chip's *footprint* is the polygon of
its four pixel-grid corners reprojected to longitude/latitude (OGC:CRS84, the GeoParquet default
CRS), so chips of scenes in different CRSs share one geometry column; ``bounds`` stay in the
scene's own CRS, ``bounds_wgs84`` are the densified bounds from
``rasterio.warp.transform_bounds``.

The columns a tiled shard carries beside ``sample_id``/``image``/``label``/``class_name``
(:data:`GEO_FIELDS`) are what the query hand-off, the Label Studio tasks and the predictions read;
an archive without them (image folders, plain shards) simply has no map outputs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "GEO_FIELDS",
    "GEO_COLUMNS",
    "FOOTPRINT",
    "chip_offsets",
    "chip_areas_m2",
    "chip_geometry",
    "polygon_wkb",
    "polygon_coords",
    "geoparquet_metadata",
    "read_geo_rows",
    "write_geojson",
    "feature",
]

FOOTPRINT = "geometry"
"""Name of the WKB footprint column (GeoParquet's conventional primary column name)."""

GEO_FIELDS = [
    pa.field("scene", pa.string()),
    pa.field("row_off", pa.int32()),
    pa.field("col_off", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("crs", pa.string()),
    pa.field("transform", pa.list_(pa.float64(), 6)),
    pa.field("bounds", pa.list_(pa.float64(), 4)),
    pa.field("bounds_wgs84", pa.list_(pa.float64(), 4)),
    pa.field("nodata_fraction", pa.float32()),
    pa.field(FOOTPRINT, pa.binary()),
]
"""Per-chip geo columns: scene URI, pixel window, CRS (``EPSG:n`` or WKT), affine transform
``(a, b, c, d, e, f)`` as in rasterio, bounds ``(left, bottom, right, top)`` in the CRS and in
WGS84, the nodata fraction, and the WGS84 footprint polygon as WKB."""

GEO_COLUMNS = [f.name for f in GEO_FIELDS]


def chip_offsets(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of chips of ``size`` every ``stride`` pixels along an axis of ``length``.

    The last chip is shifted back to end at the scene's edge when the stride grid does not reach
    it, so every pixel is covered (the last two chips then overlap). A scene shorter than ``size``
    has no chip.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"size and stride must be >= 1, got {size}, {stride}")
    if length < size:
        return []
    offs = list(range(0, length - size + 1, stride))
    if offs[-1] + size < length:
        offs.append(length - size)
    return offs


def polygon_coords(corners_x: Sequence[float], corners_y: Sequence[float]) -> list[list[float]]:
    """A closed, counter-clockwise ring (GeoJSON's and GeoParquet's orientation) of 4 corners."""
    pts = list(zip(corners_x, corners_y, strict=True))
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True))
    if area < 0:
        pts = pts[::-1]
    return [[float(x), float(y)] for x, y in [*pts, pts[0]]]


def polygon_wkb(ring: Sequence[Sequence[float]]) -> bytes:
    """ISO WKB (little endian) of a polygon with one ring of ``(x, y)`` points."""
    out = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring))
    return out + b"".join(struct.pack("<dd", float(x), float(y)) for x, y in ring)


def wkb_ring(wkb: bytes) -> list[list[float]]:
    """The ring of a polygon written by :func:`polygon_wkb`."""
    order, kind, nrings = struct.unpack_from("<BII", wkb, 0)
    if order != 1 or kind != 3 or nrings != 1:
        raise ValueError("not a one-ring little-endian WKB polygon")
    (n,) = struct.unpack_from("<I", wkb, 9)
    xy = struct.unpack_from(f"<{2 * n}d", wkb, 13)
    return [[xy[2 * i], xy[2 * i + 1]] for i in range(n)]


EARTH_RADIUS_M = 6_371_007.2
"""The authalic (equal-area) radius of the WGS84 ellipsoid: a sphere of the same surface area."""


def chip_areas_m2(
    crs: Sequence[str], transform: np.ndarray, width: np.ndarray, height: np.ndarray
) -> np.ndarray:
    """Each chip's ground area in square metres, from its CRS, affine transform and pixel size.

    Projected CRS: ``|a e - b d| * width * height`` in the CRS's linear unit, times that unit's metres
    squared (the projection's own scale error, under 0.1% within a UTM zone, is left in). Geographic
    CRS (degrees): the chip is a longitude/latitude rectangle, whose area on the authalic sphere is
    ``R^2 |dlon| |sin(lat2) - sin(lat1)|`` (within 0.3% of the ellipsoid's at any latitude).
    """
    from rasterio.crs import CRS

    t = np.asarray(transform, dtype=np.float64).reshape(-1, 6)
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    out = np.empty(len(t))
    names = np.asarray(crs, dtype=object)
    for name in dict.fromkeys(names.tolist()):
        at = names == name
        c = CRS.from_user_input(name)
        a, b, x0, d, e, y0 = (t[at, k] for k in range(6))
        if c.is_geographic:
            lat1, lat2 = np.radians(y0), np.radians(y0 + e * h[at])
            out[at] = EARTH_RADIUS_M**2 * np.abs(np.radians(a * w[at])) * np.abs(np.sin(lat2) - np.sin(lat1))
        else:
            unit = float(c.linear_units_factor[1])
            out[at] = np.abs(a * e - b * d) * w[at] * h[at] * unit**2
    return out


def crs_string(crs: Any) -> str:
    """``EPSG:n`` when the CRS has an EPSG code, else its WKT."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def chip_geometry(
    transform: Any, crs: Any, row_off: int, col_off: int, width: int, height: int
) -> dict[str, Any]:
    """The geo columns of one chip window (all but ``scene`` and ``nodata_fraction``).

    Args:
        transform: The scene's affine transform (``rasterio.Affine``).
        crs: The scene's CRS (``rasterio.crs.CRS``).
        row_off, col_off, width, height: The chip's pixel window.
    """
    from rasterio import Affine
    from rasterio.warp import transform as warp_points
    from rasterio.warp import transform_bounds

    t = transform @ Affine.translation(col_off, row_off)
    cols, rows = [0, width, width, 0], [0, 0, height, height]
    xs, ys = zip(*(t @ (c, r) for c, r in zip(cols, rows, strict=True)), strict=True)
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    lon, lat = warp_points(crs, "EPSG:4326", list(xs), list(ys))
    return {
        "row_off": row_off,
        "col_off": col_off,
        "width": width,
        "height": height,
        "crs": crs_string(crs),
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "bounds": [left, bottom, right, top],
        "bounds_wgs84": list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)),
        FOOTPRINT: polygon_wkb(polygon_coords(lon, lat)),
    }


def geoparquet_metadata(bbox: Sequence[float] | None = None) -> dict[bytes, bytes]:
    """The ``geo`` file metadata of GeoParquet 1.1 for the WGS84 footprint column.

    No ``crs`` key: GeoParquet's default is OGC:CRS84 (longitude, latitude), which the footprints are.
    """
    col: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "orientation": "counterclockwise",
    }
    if bbox is not None:
        col["bbox"] = [float(v) for v in bbox]
    meta = {"version": "1.1.0", "primary_column": FOOTPRINT, "columns": {FOOTPRINT: col}}
    return {b"geo": json.dumps(meta).encode()}


def bbox_of(bounds_wgs84: Iterable[Sequence[float]]) -> list[float] | None:
    """The union of WGS84 bounds, or None when there are none."""
    b = np.asarray(list(bounds_wgs84), dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return None
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


def has_geo(schema: pa.Schema) -> bool:
    """Whether a shard schema carries the chip geo columns."""
    return all(n in schema.names for n in GEO_COLUMNS)


def read_geo_rows(root: str, rows: pa.Table) -> pa.Table | None:
    """The geo columns of manifest rows (``sample_id``, ``source``, ``row``) of a shards root.

    Reads only the geo columns of the shards the rows live in (never the images); rows come back
    in the order given. Returns None when the shards carry no geo columns (not a tiled archive).
    """
    from hssal_ray.data.fetch import root_fs

    if rows.num_rows == 0:
        return None
    fs, base = root_fs(root)
    sources = rows.column("source").to_numpy(zero_copy_only=False)
    want = rows.column("row").to_numpy().astype(np.int64)
    parts, order = [], []
    for source in np.unique(sources):
        with fs.open_input_file(f"{base.rstrip('/')}/{source}") as f:
            pf = pq.ParquetFile(f)
            if not has_geo(pf.schema_arrow):
                return None
            t = pf.read(columns=GEO_COLUMNS)
        at = np.flatnonzero(sources == source)
        parts.append(t.take(pa.array(want[at])).cast(pa.schema(GEO_FIELDS)))
        order.append(at)
    table = pa.concat_tables(parts)
    return table.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def feature(geometry_wkb: bytes, properties: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON feature of a footprint."""
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [wkb_ring(geometry_wkb)]},
        "properties": properties,
    }


def write_geojson(path: str, features: Iterable[dict[str, Any]]) -> int:
    """Write a GeoJSON FeatureCollection atomically, streaming the features; returns their count.

    Local paths stream to a temporary file (bounded memory for any number of features); URIs are
    assembled in memory and written in one piece.
    """
    from hssal_ray import _io

    n = 0
    if _io.is_uri(path):
        parts = []
        for f in features:
            parts.append(json.dumps(f))
            n += 1
        _io.atomic_write_text(
            path, '{"type": "FeatureCollection", "features": [\n' + ",\n".join(parts) + "\n]}\n"
        )
        return n
    with _io._atomic_local(path) as fh:
        fh.write(b'{"type": "FeatureCollection", "features": [\n')
        for f in features:
            fh.write((",\n" if n else "").encode() + json.dumps(f).encode())
            n += 1
        fh.write(b"\n]}\n")
    return n
