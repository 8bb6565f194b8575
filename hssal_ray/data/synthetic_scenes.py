"""Synthetic GeoTIFF scenes for the archive-to-map demo and tests: 4 bands, uint16, a nodata border.

``python -m hssal_ray.data.synthetic_scenes OUT [--blocks 8]`` writes a UTM scene (EPSG:32633, 10 m pixels)
and a WGS84 scene (EPSG:4326, 1e-4 degree pixels), each with a label raster on its grid: what
``python -m hssal_ray.data.tile ... --label-rasters`` reads (``make demo-map``).

Each scene is a grid of ``block x block`` pixel squares, each square one of three land-cover
classes with its own spectral signature (plus noise); a label raster on the same grid holds the
class index of every pixel. The left ``block`` columns are nodata (0, every band), and the top
``top_nodata`` rows too, so tiling at ``size = block`` skips one column of chips and keeps the
top row with a nodata fraction of ``top_nodata / block``. Clearly synthetic: no real place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "SIGNATURES", "block_classes", "write_scene", "two_scenes", "main"]

CLASSES = ["forest", "water", "urban"]
SIGNATURES = np.array(
    [[400, 700, 500, 3500], [900, 600, 300, 200], [2200, 2300, 2400, 2600]], dtype=np.float64
)


def block_classes(rows: int, cols: int) -> np.ndarray:
    """Class index of each ``(block_row, block_col)``."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (r * 2 + c) % len(CLASSES)


def write_scene(
    path: Path,
    crs: str,
    transform: object,
    *,
    blocks: int = 5,
    block: int = 32,
    top_nodata: int = 4,
    seed: int = 0,
    noise: float = 150.0,
) -> tuple[Path, Path]:
    """Write ``path`` (4-band uint16 GeoTIFF, nodata 0) and ``path``'s label raster; returns both paths."""
    import rasterio

    rng = np.random.default_rng(seed)
    side = blocks * block
    cls = np.kron(block_classes(blocks, blocks), np.ones((block, block), dtype=np.int64))
    img = SIGNATURES[cls].transpose(2, 0, 1) + rng.normal(0, noise, (4, side, side))
    img = np.clip(img, 1, 65535).astype(np.uint16)
    img[:, :, :block] = 0
    img[:, :top_nodata, :] = 0
    labels = cls.astype(np.uint8)
    labels[:, :block] = 255
    profile = dict(driver="GTiff", width=side, height=side, crs=crs, transform=transform)
    with rasterio.open(path, "w", count=4, dtype="uint16", nodata=0, **profile) as dst:
        dst.write(img)
    lab = path.with_name(path.stem + "_labels.tif")
    with rasterio.open(lab, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(labels[None])
    return path, lab


def two_scenes(folder: Path, **kw: object) -> list[tuple[Path, Path]]:
    """A UTM scene (EPSG:32633, 10 m pixels) and a WGS84 scene (EPSG:4326, 1e-4 degree pixels)."""
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_scene(
            folder / "utm_scene.tif", "EPSG:32633", from_origin(500000, 4500000, 10, 10), seed=1, **kw
        ),
        write_scene(
            folder / "wgs84_scene.tif", "EPSG:4326", from_origin(12.0, 41.0, 1e-4, 1e-4), seed=2, **kw
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hssal_ray.data.synthetic_scenes OUT``: the two scenes and their label rasters."""
    p = argparse.ArgumentParser(prog="python -m hssal_ray.data.synthetic_scenes", description=main.__doc__)
    p.add_argument("out", help="folder to write the scenes into")
    p.add_argument("--blocks", type=int, default=8, help="land-cover squares per side (default 8)")
    p.add_argument("--block", type=int, default=32, help="pixels per square side (default 32)")
    p.add_argument(
        "--noise", type=float, default=150.0, help="pixel noise (std of the 16-bit values; default 150)"
    )
    args = p.parse_args(argv)
    for scene, labels in two_scenes(Path(args.out), blocks=args.blocks, block=args.block, noise=args.noise):
        print(f"{scene} (labels: {labels})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
