"""Pack a dataset into Parquet shards: ``python -m hssal_ray.data.shard SRC DST --rows-per-shard N``.

Each shard ``DST/shard-00000.parquet``, ... holds the *original encoded bytes* of its images
(``image``, binary; nothing is decoded or re-encoded) with ``sample_id`` (the id the catalog gives
the file in SRC), ``label`` (int32, -1 unknown) and ``class_name``; the sorted class names are in the
schema metadata key ``hssal_classes`` (JSON), identical in every shard. Rows are in ``sample_id``
order, in small row groups so that a reader can fetch a few rows without reading the whole shard.

Scanning DST (:func:`hssal_ray.data.catalog.scan`) gives the same ids, labels and split as scanning
SRC: the split is a function of ``(seed, sample_id, label)`` only. The writer streams: it holds at
most one shard's bytes in memory, and each shard is written atomically. SRC and DST may be local
paths or pyarrow filesystem URIs (``s3://``, ``gs://``, ``file://``). Files that vanish or cannot be
read while sharding are skipped, logged and counted in the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from hssal_ray import _io
from hssal_ray.data._shard_index import CLASSES_KEY
from hssal_ray.data.catalog import scan
from hssal_ray.data.fetch import load_bytes
from hssal_ray.errors import DataError, HSSALError

__all__ = ["write_shards", "ShardReport", "SHARD_SCHEMA", "main"]

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("image", pa.binary()), ("label", pa.int32()), ("class_name", pa.string())]
)
_READ_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class ShardReport:
    """What :func:`write_shards` wrote.

    Args:
        dst: Output folder.
        num_rows: Rows written.
        num_shards: Shard files written.
        num_bytes: Total encoded image bytes written.
        num_classes: Classes in the metadata.
        skipped: Sample ids whose source could not be read.
        seconds: Wall time.
    """

    dst: str
    num_rows: int
    num_shards: int
    num_bytes: int
    num_classes: int
    skipped: tuple[str, ...]
    seconds: float

    def summary(self) -> str:
        """One-line summary."""
        skipped = f", skipped {len(self.skipped)} unreadable" if self.skipped else ""
        return (
            f"wrote {self.num_rows} samples ({self.num_classes} classes, {self.num_bytes / 1e6:.1f} MB of "
            f"images) into {self.num_shards} shard(s) at {self.dst} in {self.seconds:.1f} s{skipped}"
        )


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _write_one(path: str, columns: dict[str, list], classes: Sequence[str], row_group_size: int) -> None:
    table = pa.table(columns, schema=SHARD_SCHEMA).replace_schema_metadata(
        {CLASSES_KEY.encode(): json.dumps(list(classes)).encode()}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression="none")
    _io.atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _clear_old(dst: str, overwrite: bool) -> None:
    old = [n for n in _io.listdir(dst) if n.endswith(".parquet")]
    if not old:
        return
    if not overwrite:
        raise DataError(f"{dst} already holds {len(old)} Parquet file(s): pass --overwrite to replace them")
    for name in old:
        _io.remove(_io.join(dst, name))


def write_shards(
    src: str,
    dst: str,
    *,
    rows_per_shard: int = 1000,
    test_fraction: float = 0.2,
    seed: int = 0,
    row_group_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardReport:
    """Scan ``src`` and write its images into Parquet shards under ``dst``.

    Args:
        src: Dataset root (ImageFolder or flat folder; shards can be re-sharded too).
        dst: Output folder (local path or URI); created if needed.
        rows_per_shard: Rows per shard file.
        test_fraction: Passed to :func:`~hssal_ray.data.catalog.scan` (only for the logged summary:
            shards do not store the split, a scan recomputes it).
        seed: Split seed, as above.
        row_group_size: Rows per Parquet row group (the unit a random-access reader fetches).
        overwrite: Replace existing ``*.parquet`` files in ``dst`` (otherwise they are an error, as
            stale shards would add duplicate ids).
        progress: Show a tqdm progress bar on stderr.

    Returns:
        A :class:`ShardReport`.

    Raises:
        DataError: SRC is missing/empty, DST already holds shards and ``overwrite`` is false, or no
            image could be read.
    """
    if rows_per_shard < 1 or row_group_size < 1:
        raise ValueError("rows_per_shard and row_group_size must be >= 1")
    t0 = time.perf_counter()
    cat = scan(src, test_fraction=test_fraction, seed=seed)
    log.info("source: %s", cat.summary())
    _io.makedirs(dst)
    _clear_old(dst, overwrite)
    table = cat.table
    n_shards = n_rows = n_bytes = 0
    skipped: list[str] = []
    cols: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    bar = tqdm(total=table.num_rows, unit="img", desc="sharding", file=sys.stderr, disable=not progress)
    try:
        for start in range(0, table.num_rows, _READ_CHUNK):
            chunk = table.slice(start, _READ_CHUNK)
            blobs = load_bytes(cat.root, cat.kind, chunk)
            for sid, label, cname, blob in zip(
                chunk["sample_id"].to_pylist(),
                chunk["label"].to_pylist(),
                chunk["class_name"].to_pylist(),
                blobs,
                strict=True,
            ):
                if blob is None:
                    log.warning("skipping unreadable source of %s", sid)
                    skipped.append(sid)
                    continue
                for name, value in zip(SHARD_SCHEMA.names, (sid, blob, label, cname), strict=True):
                    cols[name].append(value)
                n_bytes += len(blob)
                if len(cols["sample_id"]) == rows_per_shard:
                    _write_one(_io.join(dst, _shard_name(n_shards)), cols, cat.class_names, row_group_size)
                    n_shards, n_rows = n_shards + 1, n_rows + rows_per_shard
                    cols = {name: [] for name in SHARD_SCHEMA.names}
            bar.update(chunk.num_rows)
        if cols["sample_id"]:
            _write_one(_io.join(dst, _shard_name(n_shards)), cols, cat.class_names, row_group_size)
            n_shards, n_rows = n_shards + 1, n_rows + len(cols["sample_id"])
    finally:
        bar.close()
    if n_rows == 0:
        raise DataError(f"no image under {src} could be read: nothing written to {dst}")
    return ShardReport(
        dst=str(dst),
        num_rows=n_rows,
        num_shards=n_shards,
        num_bytes=n_bytes,
        num_classes=cat.num_classes,
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    p = argparse.ArgumentParser(prog="python -m hssal_ray.data.shard", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="dataset root: ImageFolder tree or flat folder (local path or URI)")
    p.add_argument("dst", help="output folder for shard-NNNNN.parquet files (local path or URI)")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="rows per shard file (default 1000)")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="split fraction for the summary (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="split seed for the summary (default 0)")
    p.add_argument("--row-group-size", type=int, default=32, help="rows per Parquet row group (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace existing *.parquet files in DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = write_shards(
            args.src,
            args.dst,
            rows_per_shard=args.rows_per_shard,
            test_fraction=args.test_fraction,
            seed=args.seed,
            row_group_size=args.row_group_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (HSSALError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
