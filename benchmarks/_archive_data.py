"""The synthetic archive of :mod:`benchmarks.archive_scale`: N distinct 32x32 RGB PNGs in Parquet shards.

Shards have the layout ``python -m hssal_ray.data.shard`` writes (same schema and writer,
:func:`hssal_ray.data.shard._write_one`). Images are a few hundred seeded smooth tiles, rolled, with
the image index stamped into pixel (0, 0): PNG is lossless, so every file decodes to distinct
pixels, and generation runs at ~10k images/s per core. An archive is reused while its parameters
match (a hidden ``.params.json`` beside the shards).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.archive_scale")

NUM_CLASSES = 10
N_TILES = 256
MAX_IMAGES = 2**24  # the index is stamped into the 3 bytes of pixel (0, 0)
_PARAMS = ".params.json"  # hidden: scan() ignores names starting with "."


def sample_id(i: int) -> str:
    """The id (= shard ``sample_id``) of generated image ``i``; zero-padded, so sorted ids = index order."""
    return f"img{i:08d}.png"


def class_names() -> list[str]:
    """Class names stored in the shards' metadata (the archive itself is unlabeled: ``label = -1``)."""
    return [f"class_{c:02d}" for c in range(NUM_CLASSES)]


# ------------------------------------------------------------------------------------ generation


def _tiles(seed: int, size: int) -> np.ndarray:
    """``N_TILES`` smooth seeded RGB tiles ``(N_TILES, size, size, 3)`` uint8 (upsampled 8x8 noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (N_TILES, 8, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BILINEAR)) for c in coarse]
    )


def image_array(tiles: np.ndarray, i: int) -> np.ndarray:
    """Pixels of image ``i``: tile ``i % N_TILES`` rolled, index stamped into pixel (0, 0) (distinct)."""
    size = tiles.shape[1]
    k = i // N_TILES
    a = np.roll(tiles[i % N_TILES], (k // size % size, k % size), axis=(0, 1)).copy()
    a[0, 0] = ((i >> 16) & 255, (i >> 8) & 255, i & 255)
    return a


def _encode_png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_GEN: dict[str, Any] = {}


def _gen_init(seed: int, size: int) -> None:
    _GEN["tiles"] = _tiles(seed, size)


def _gen_shard(job: tuple[str, int, int]) -> tuple[int, int]:
    """Write one shard with images ``[start, stop)``; returns (rows, encoded bytes)."""
    from hssal_ray.data.shard import SHARD_SCHEMA, _write_one

    path, start, stop = job
    tiles = _GEN["tiles"]
    blobs = [_encode_png(image_array(tiles, i)) for i in range(start, stop)]
    cols = {
        "sample_id": [sample_id(i) for i in range(start, stop)],
        "image": blobs,
        "label": [-1] * (stop - start),
        "class_name": [None] * (stop - start),
    }
    assert list(cols) == SHARD_SCHEMA.names
    _write_one(path, cols, class_names(), row_group_size=32)  # the shard CLI's default row groups
    return stop - start, sum(map(len, blobs))


def generate_archive(
    n: int,
    work_dir: str | Path,
    *,
    seed: int = 0,
    size: int = 32,
    rows_per_shard: int = 10_000,
    procs: int = 2,
) -> dict[str, Any]:
    """Generate (or reuse) an archive of ``n`` images; returns its path and how it was made.

    The folder holds ``shard-NNNNN.parquet`` files (``hssal_ray.data.shard`` layout) and a hidden
    ``.params.json`` written last: an archive is reused only if that file matches the parameters.
    """
    if not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"n must be in [1, {MAX_IMAGES}], got {n}")
    from hssal_ray.data.shard import _shard_name

    params = {
        "n": n,
        "seed": seed,
        "size": size,
        "rows_per_shard": rows_per_shard,
        "format": "png",
        "version": 1,
    }
    root = Path(work_dir) / f"archive_n{n}_seed{seed}_{size}px_r{rows_per_shard}"
    marker = root / _PARAMS
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        info = json.loads(marker.read_text())
        return {**info, "root": str(root), "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    jobs = [
        (str(root / _shard_name(s)), start, min(start + rows_per_shard, n))
        for s, start in enumerate(range(0, n, rows_per_shard))
    ]
    t0 = time.perf_counter()
    rows = nbytes = 0
    ctx = mp.get_context("spawn")  # the parent may hold threads (logging, Ray): never fork it
    with ctx.Pool(max(1, min(procs, len(jobs))), initializer=_gen_init, initargs=(seed, size)) as pool:
        for r, b in pool.imap_unordered(_gen_shard, jobs):
            rows, nbytes = rows + r, nbytes + b
    secs = time.perf_counter() - t0
    info = {"params": params, "images": rows, "shards": len(jobs), "bytes": nbytes, "seconds": round(secs, 2)}
    marker.write_text(json.dumps(info) + "\n")
    log.info(
        "generated %d images (%.0f MB) in %d shards at %s in %.0f s",
        rows,
        nbytes / 1e6,
        len(jobs),
        root,
        secs,
    )
    return {**info, "root": str(root), "reused": False}
