"""Tiny, seeded datasets for tests: ImageFolder trees, flat folders, Parquet shards, archives.

Everything is generated at test time into a temporary folder (TorchGeo's ``tests/data/*/data.py``
idea); sizes are a handful of 32x32 images so that tests stay fast.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from hssal_ray.data.shard import write_shards
from hssal_ray.data.synthetic import make_synthetic_rs

__all__ = [
    "tiny_imagefolder",
    "tiny_flat",
    "tiny_shards",
    "write_plain_shard",
    "build_zip",
    "build_tar",
    "zip_tree",
]


def tiny_imagefolder(
    root: str,
    *,
    num_classes: int = 3,
    per_class: int = 5,
    size: int = 32,
    bands: int = 3,
    fmt: str = "png",
    seed: int = 0,
) -> str:
    """A seeded synthetic ImageFolder (``synthetic_*`` class folders) under ``root``."""
    return make_synthetic_rs(
        str(root),
        num_classes=num_classes,
        per_class=per_class,
        size=size,
        bands=bands,
        fmt=fmt,
        seed=seed,  # type: ignore[arg-type]
    )


def tiny_flat(root: str, *, n_classes: int = 2, per_class: int = 3, size: int = 32, seed: int = 0) -> str:
    """A flat folder of unlabeled synthetic images."""
    return make_synthetic_rs(
        str(root), num_classes=n_classes, per_class=per_class, size=size, seed=seed, unlabeled_flat=True
    )


def tiny_shards(src: str, dst: str, *, rows_per_shard: int = 4, row_group_size: int = 2) -> str:
    """Shard ``src`` into ``dst`` with our shard writer (quietly)."""
    write_shards(
        str(src), str(dst), rows_per_shard=rows_per_shard, row_group_size=row_group_size, progress=False
    )
    return str(dst)


def write_plain_shard(
    path: str, rows: Mapping[str, list], metadata: Mapping[bytes, bytes] | None = None
) -> str:
    """Write a Parquet file with exactly the given columns (for shards 'from elsewhere')."""
    table = pa.table(dict(rows))
    if metadata is not None:
        table = table.replace_schema_metadata(dict(metadata))
    pq.write_table(table, str(path))
    return str(path)


def build_zip(path: str, members: Mapping[str, bytes], *, symlinks: Mapping[str, str] | None = None) -> str:
    """A zip with the given members (names used verbatim, so ``../x`` is possible) and symlinks."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            z.writestr(info, target)
    return str(path)


def build_tar(path: str, members: Mapping[str, bytes], *, symlinks: Mapping[str, str] | None = None) -> str:
    """A tar with the given members and symlinks (names used verbatim)."""
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)
    return str(path)


def zip_tree(path: str, tree: str, prefix: str) -> str:
    """Zip every file under ``tree`` as ``prefix/<relative path>``."""
    with zipfile.ZipFile(path, "w") as z:
        for dirpath, _, files in os.walk(tree):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                z.write(full, f"{prefix}/{os.path.relpath(full, tree)}")
    return str(path)
