"""The scores-file contract: read a pool of scored samples fast (writing it: ``scores_table``).

A scores "file" is one Parquet file or a directory of Parquet part files (as Ray Data writes
them), on a local path or a URI. Columns:

=================  =========================================================================
``sample_id``      string, unique
``embedding``      list<float16 | float32> (or fixed-size list / Ray tensor extension), L2-normalised;
                   or packed: fixed_size_binary(d * itemsize), one row's little-endian floats a
                   value, the dtype in the field metadata ``hssal.dtype`` (the frozen path's files)
``probs``          list<float32>, class probabilities
``u_<name>``       float, one column per uncertainty (``u_badge``, ``u_entropy``, ...)
``confident``      optional bool: weak and strong views both confidently pseudo-labeled
``pred``           optional int: predicted class
=================  =========================================================================

:func:`load_pool` streams record batches into preallocated contiguous numpy arrays (list columns
are flattened with Arrow, no per-row Python), so the peak is the arrays plus a few batches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hssal_ray import _csv, _io
from hssal_ray.errors import DataError
from hssal_ray.query.base import Pool, nonfinite_rows
from hssal_ray.query.scores_table import (
    CONFIDENT_COLUMN,
    LIST_COLUMNS,
    PACKED_DTYPE_KEY,
    parquet_write_options,
    scores_arrow_table,
    write_scores,
)

__all__ = [
    "load_pool",
    "scores_columns",
    "write_scores",
    "scores_arrow_table",
    "CONFIDENT_COLUMN",
    "read_id_list",
    "exclude_mask",
    "pool_labels",
    "read_labeled_classes",
    "parquet_write_options",
    "LIST_COLUMNS",
]

logger = logging.getLogger(__name__)
_KNOWN_SCALARS = (CONFIDENT_COLUMN, "pred")


def _list_storage(arr: pa.Array) -> pa.Array:
    while isinstance(arr, pa.ExtensionArray):  # Ray's tensor extension, arrow.fixed_shape_tensor
        arr = arr.storage
    return arr


def _flatten_list(arr: pa.Array, name: str, ids: pa.Array, field: pa.Field) -> tuple[np.ndarray, int]:
    """(m, width) numpy view of a list column batch; DataError on ragged, null or non-list data."""
    arr = _list_storage(arr)
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        return _unpack(arr, name, ids, field)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise DataError(f"scores column {name!r} must be a list of floats, got {t}")
    if arr.null_count:
        rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"scores column {name!r} is null for sample_ids {ids.take(rows[:5]).to_pylist()}")
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy()
        width = int(lengths[0]) if len(lengths) else 0
        ragged = np.flatnonzero(lengths != width)
        if ragged.size:
            raise DataError(
                f"scores column {name!r} has rows of different lengths ({width} vs "
                f"{int(lengths[ragged[0]])}) at sample_ids {ids.take(ragged[:5]).to_pylist()}"
            )
    values = arr.flatten()
    if values.null_count:
        raise DataError(f"scores column {name!r} holds null values")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise DataError(f"scores column {name!r} must hold floats, got {values.type}")
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), width), width


def _unpack(
    arr: pa.FixedSizeBinaryArray, name: str, ids: pa.Array, field: pa.Field
) -> tuple[np.ndarray, int]:
    """(m, width) view of a packed list column (:func:`~hssal_ray.query.scores_table.packed_array`)."""
    dtype = (field.metadata or {}).get(PACKED_DTYPE_KEY, b"").decode()
    if dtype not in ("float16", "float32"):
        raise DataError(
            f"scores column {name!r} is fixed_size_binary without a float16/float32 "
            f"{PACKED_DTYPE_KEY.decode()} field metadata (got {dtype!r})"
        )
    if arr.null_count:
        rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"scores column {name!r} is null for sample_ids {ids.take(rows[:5]).to_pylist()}")
    dt = np.dtype(dtype).newbyteorder("<")
    size = arr.type.byte_width
    if size % dt.itemsize:
        raise DataError(f"scores column {name!r}: {size}-byte values do not hold whole {dtype} numbers")
    width = size // dt.itemsize
    flat = np.frombuffer(arr.buffers()[1], dtype=dt, count=len(arr) * width, offset=arr.offset * size)
    return flat.reshape(len(arr), width), width


def _part_paths(path: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and the Parquet file, or the part files of a directory (sorted; names starting
    with ``.``/``_`` are skipped, as Arrow's dataset discovery does)."""
    fs, p = _io.resolve_fs(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"cannot read scores file {path!r}: it does not exist")
    if info.type == pafs.FileType.Directory:
        sel = fs.get_file_info(pafs.FileSelector(p, recursive=True))
        paths = sorted(
            i.path for i in sel if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))
        )
        if not paths:
            raise DataError(f"cannot read scores file {path!r}: the directory holds no Parquet files")
        return fs, paths
    return fs, [p]


@contextlib.contextmanager
def _open_part(fs: pafs.FileSystem, part: str, path: str) -> Iterator[pq.ParquetFile]:
    """One part file, opened without pre-buffering (a streamed read then holds about one row group
    in memory instead of the whole file) and closed on exit: a Ray Data output directory holds
    one part per ~256 rows, and an open part's footer costs ~20-30 KB, so parts are never all held
    open at once (1M rows = ~3,900 parts = ~100 MB of footers)."""
    try:
        f = fs.open_input_file(part)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read scores file {path!r}: {e}") from e
    with f:
        try:
            pf = pq.ParquetFile(f, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read scores file {path!r}: {e}") from e
        yield pf


def scores_columns(path: str) -> list[str]:
    """Column names of a scores file (Parquet file or directory), read from its footer only."""
    fs, parts = _part_paths(path)
    with _open_part(fs, parts[0], path) as pf:
        return list(pf.schema_arrow.names)


def load_pool(
    path: str,
    columns: Sequence[str] | None = None,
    *,
    batch_size: int = 65_536,
    skip: Sequence[str] = (),
) -> Pool:
    """Read a scores file (Parquet file or directory, local or URI) into a :class:`Pool`.

    Args:
        path: the file or directory.
        columns: columns to read besides ``sample_id`` (e.g. ``["embedding", "u_badge"]``); None =
            every known column present (``embedding``, ``probs``, ``u_*``, ``confident``, ``pred``).
        batch_size: rows per streamed record batch.
        skip: columns not to read even when present (e.g. ``["embedding"]`` when the embeddings
            come from elsewhere: :class:`~hssal_ray.query.rowsource.RowSource`).

    Returns:
        A Pool with ``ids`` (n,) object, ``embeddings`` (n, d) float16/float32, ``probs`` (n, C)
        float32, ``scores`` name -> (n,) float32, ``confident`` (n,) bool, ``pred`` (n,) int64.

    Raises:
        DataError: missing path/columns, ragged or null lists, duplicate ids, NaN/inf rows.
    """
    fs, parts = _part_paths(path)
    want: list[str] = []
    n = 0
    for i, part in enumerate(parts):  # footers only: check the columns, count the rows
        with _open_part(fs, part, path) as pf:
            names = pf.schema_arrow.names
            if i == 0:
                if "sample_id" not in names:
                    raise DataError(
                        f"scores file {path!r} has no 'sample_id' column (columns: {', '.join(names)})"
                    )
                known = [c for c in names if c in LIST_COLUMNS or c in _KNOWN_SCALARS or c.startswith("u_")]
                want = [c for c in (known if columns is None else dict.fromkeys(columns)) if c not in skip]
            missing = [c for c in ["sample_id", *want] if c not in names]
            if missing:
                raise DataError(f"scores file {path!r} lacks columns {missing} (columns: {', '.join(names)})")
            n += pf.metadata.num_rows
    out: dict[str, np.ndarray] = {}
    # ids go straight into the result, batch by batch: no Arrow copy of the whole id column is held
    # next to the Python strings (an Arrow hash table over 1M ids alone peaks at ~70 MB).
    ids_np = np.empty(n, dtype=object)
    null_ids = 0
    pos = 0
    for batch in _batches(fs, parts, path, ["sample_id", *want], batch_size):
        if pos + batch.num_rows > n:
            raise DataError(f"scores file {path!r} changed while reading (more than {n} rows)")
        m = batch.num_rows
        if m == 0:
            continue
        ids = batch.column("sample_id")
        null_ids += ids.null_count
        ids_np[pos : pos + m] = ids.to_numpy(zero_copy_only=False)
        for c in want:
            col = batch.column(c)
            if c in LIST_COLUMNS:
                vals, width = _flatten_list(col, c, ids, batch.schema.field(c))
                if c not in out:
                    dt = np.float16 if c == "embedding" and vals.dtype == np.float16 else np.float32
                    out[c] = np.empty((n, width), dtype=dt)
                elif out[c].shape[1] != width:
                    raise DataError(
                        f"scores column {c!r} changes width from {out[c].shape[1]} to {width} "
                        f"at sample_id {ids[0]}"
                    )
                out[c][pos : pos + m] = vals
            else:
                if col.null_count:
                    rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
                    raise DataError(
                        f"scores column {c!r} is null for sample_ids {ids.take(rows[:5]).to_pylist()}"
                    )
                dt = bool if c == CONFIDENT_COLUMN else np.int64 if c == "pred" else np.float32
                if c not in out:
                    out[c] = np.empty(n, dtype=dt)
                out[c][pos : pos + m] = col.to_numpy(zero_copy_only=False)
        pos += m
    if pos != n:
        raise DataError(f"scores file {path!r} changed while reading ({pos} of {n} rows)")
    if null_ids:
        raise DataError(f"scores file {path!r} has {null_ids} null sample_ids")
    if _has_duplicates(ids_np):
        vc = pc.value_counts(pa.array(ids_np))
        dup = vc.filter(pc.greater(vc.field("counts"), 1)).field("values")
        raise DataError(f"scores file {path!r} has duplicate sample_ids: {dup.to_pylist()[:5]}")
    for c, arr in out.items():
        if c in _KNOWN_SCALARS:
            continue
        bad = nonfinite_rows(arr)
        if bad.size:
            raise DataError(
                f"scores column {c!r} has NaN or inf in {bad.size} rows, e.g. sample_ids "
                f"{[str(ids_np[r]) for r in bad[:5]]}"
            )
    logger.debug("loaded %d rows, columns %s from %s", n, want, path)
    return Pool(
        ids=ids_np,
        embeddings=out.get("embedding"),
        probs=out.get("probs"),
        scores={c: a for c, a in out.items() if c.startswith("u_")},
        confident=out.get(CONFIDENT_COLUMN),
        pred=out.get("pred"),
    )


def _has_duplicates(ids: np.ndarray) -> bool:
    """Whether the (n,) object array ``ids`` holds a value twice.

    Sorted 64-bit hashes of the (already built) strings first (8 bytes a row; a set or an Arrow hash
    table of 1M ids peaks at 32-70 MB); only equal hashes, i.e. a duplicate or a rare collision, are
    checked exactly.
    """
    if len(ids) < 2:
        return False
    hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))
    hashes.sort()
    if not (hashes[1:] == hashes[:-1]).any():
        return False
    return len(set(ids)) != len(ids)


def _batches(
    fs: pafs.FileSystem, parts: Sequence[str], path: str, columns: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of every part in order, one part open at a time."""
    for part in parts:
        with _open_part(fs, part, path) as pf:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_id_list(path: str) -> np.ndarray:
    """Sample ids from a Parquet or CSV file with a ``sample_id`` column (CSV: else the first column).

    Returns:
        (m,) object array of str.
    """
    return _read_ids(path)[0]


def read_labeled_classes(path: str) -> dict[str, int]:
    """``sample_id -> class`` from a Parquet or CSV file with ``sample_id`` and ``label`` columns
    (the loop's ``labeled.parquet``, or a ``labels.csv``).

    Raises:
        DataError: the file is missing, has no ``label`` column, or a label is not an integer >= 0.
    """
    ids, t = _read_ids(path)
    if "label" not in t.column_names:
        raise DataError(
            f"{path!r} has no 'label' column (columns: {', '.join(t.column_names)}); "
            "query.alloc_purity needs the labeled rows' classes"
        )
    col = t.column("label")
    try:
        labels = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, ValueError):
        raise DataError(f"{path!r}: column 'label' must hold integer classes") from None
    if col.null_count or (labels < 0).any():
        raise DataError(f"{path!r}: column 'label' must hold integer classes >= 0 (no empty cells)")
    return dict(zip(ids.tolist(), labels.tolist(), strict=True))


def _read_ids(path: str) -> tuple[np.ndarray, pa.Table]:
    """``read_id_list``'s ids and the table they came from."""
    fs, p = _io.resolve_fs(path)
    if not _io.exists(path):
        raise DataError(f"id list {path!r} does not exist")
    if str(path).lower().endswith((".csv", ".csv.gz", ".txt")):
        import pyarrow.csv as pacsv

        with fs.open_input_stream(p) as f:
            t = pacsv.read_csv(
                f,
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={"sample_id": pa.string()}),
            )
        col = t.column("sample_id") if "sample_id" in t.column_names else t.column(0).cast(pa.string())
        # A CSV the product wrote (query.csv, labels.csv) escapes ids a spreadsheet would evaluate.
        col = pc.if_else(
            pc.match_substring_regex(col, _csv.ESCAPED_REGEX), pc.utf8_slice_codeunits(col, 1), col
        )
    else:
        t = _io.read_parquet(path)
        if "sample_id" not in t.column_names:
            raise DataError(f"{path!r} has no 'sample_id' column (columns: {', '.join(t.column_names)})")
        col = t.column("sample_id").cast(pa.string())
    return col.to_numpy().astype(object, copy=False), t  # no intermediate Python list


def exclude_mask(ids: np.ndarray, labeled_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """(n,) bool: which ``ids`` are in ``labeled_ids`` (hash join in Arrow, no Python loop)."""
    value_set = pa.array(np.asarray(labeled_ids, dtype=object), type=pa.string())
    return pc.is_in(pa.array(ids, type=pa.string()), value_set=value_set).to_numpy(zero_copy_only=False)


def pool_labels(ids: np.ndarray, exclude: np.ndarray, classes: Mapping[str, int]) -> np.ndarray:
    """(n,) int64: the class of each excluded (labeled) row from ``classes`` (id -> class), -1 elsewhere.

    Raises:
        DataError: a labeled row has no class in ``classes``.
    """
    out = np.full(len(ids), -1, dtype=np.int64)
    rows = np.flatnonzero(exclude)
    keys = [str(ids[r]) for r in rows]
    missing = [s for s in keys if s not in classes]
    if missing:
        raise DataError(f"labeled rows without a class: {missing[:5]} ({len(missing)} in all)")
    out[rows] = [int(classes[s]) for s in keys]
    return out
