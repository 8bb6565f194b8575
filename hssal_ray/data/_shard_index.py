"""The scan of a ``shards`` data root: the small columns of every Parquet shard, never the images.

Shards are written by ``python -m hssal_ray.data.shard``; their class names travel in the schema
metadata key :data:`CLASSES_KEY`.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hssal_ray import _io
from hssal_ray.errors import DataError

log = logging.getLogger(__name__)

CLASSES_KEY = "hssal_classes"


def _read_shard_index(
    fs: pafs.FileSystem, base: str, rel: str, root: str
) -> tuple[pa.Table, list[str] | None]:
    """Small columns of one shard (never the image bytes) and its class-name metadata."""
    where = _io.join(root, rel)
    try:
        with fs.open_input_file(f"{base.rstrip('/')}/{rel}") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if "sample_id" not in names or "image" not in names:
                raise DataError(f"shard {where} lacks the 'sample_id'/'image' columns (has {names})")
            cols = [c for c in ("sample_id", "label", "class_name") if c in names]
            table = pf.read(columns=cols)
            meta = pf.schema_arrow.metadata or {}
    except DataError:
        raise
    except (OSError, pa.ArrowException, ValueError) as e:
        raise DataError(f"unreadable shard {where}: {e}") from e
    classes = json.loads(meta[CLASSES_KEY.encode()]) if CLASSES_KEY.encode() in meta else None
    return table, classes


def _scan_shards(fs: pafs.FileSystem, base: str, shards: list[str], root: str) -> tuple[pa.Table, list[str]]:
    parts: list[pa.Table] = []
    classes: list[str] | None = None
    for rel in shards:
        t, cls = _read_shard_index(fs, base, rel, root)
        if cls is not None:
            if classes is not None and cls != classes:
                raise DataError(
                    f"shard {_io.join(root, rel)} lists other class names than the shards before it"
                )
            classes = cls
        n = t.num_rows
        label = (
            pc.fill_null(t["label"].cast(pa.int32()), -1)
            if "label" in t.column_names
            else pa.array([-1] * n, pa.int32())
        )
        cname = (
            t["class_name"].cast(pa.string()) if "class_name" in t.column_names else pa.nulls(n, pa.string())
        )
        parts.append(
            pa.table(
                {
                    "sample_id": t["sample_id"].cast(pa.string()),
                    "source": pa.array([rel] * n, pa.string()),
                    "row": pa.array(np.arange(n, dtype=np.int32)),
                    "label": label,
                    "class_name": cname,
                }
            )
        )
    table = pa.concat_tables(parts) if parts else None  # one chunk per shard: no combined copy
    if table is None or table.num_rows == 0:
        raise DataError(f"the Parquet shards under data root {root} hold no rows")
    if classes is None:  # shards from elsewhere: derive classes from the class_name column
        classes = sorted(set(x for x in table["class_name"].to_pylist() if x is not None))
        index = {c: i for i, c in enumerate(classes)}
        if "label" not in table.column_names or pc.all(pc.equal(table["label"], -1)).as_py():
            labels = [index.get(x, -1) if x is not None else -1 for x in table["class_name"].to_pylist()]
            table = table.set_column(3, "label", pa.array(labels, pa.int32()))
    labels = table["label"].to_numpy()
    bad = (labels < -1) | (labels >= len(classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"shard {_io.join(root, table['source'][i].as_py())} has label {labels[i]} outside "
            f"[-1, {len(classes) - 1}] (sample {table['sample_id'][i].as_py()})"
        )
    return table, classes
