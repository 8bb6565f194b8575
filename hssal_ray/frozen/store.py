"""The embedding store of the frozen-encoder path: every image encoded once per run (or once per cache).

With ``ssl.finetune=frozen`` the backbone never changes, so the loop encodes each image of the
manifest once: its clean view and ``frozen.embed_views`` seeded weak and strong augmented views, as
pooled backbone features (fp16). Encoding is Ray Data batch inference: decode + augment tasks feed
an actor pool holding the backbone (one actor per GPU with ``resources.use_gpu``), chunk by chunk
(:mod:`hssal_ray.frozen.encode`: ``ensure_store``, ``store_key``, ``store_path``, ``Encoder``,
``EncodeProgress``, importable from here too).

Layout (a directory, local or URI)::

    meta.json             key, backbone, views, chunks; "complete": true once every chunk is in;
                          "arrays" once the memory-mapped files below are written
    part-00000.parquet    rows [0, chunk_rows) of the manifest: sample_id, none, weak_0.., strong_0..
    ids.parquet           (local stores) sample_id of every row, in manifest order
    view-<name>.npy       (local stores) one (rows, dim) float16 array per view
    missing.npy           (local stores) (rows,) bool: rows that could not be decoded

Each part is written atomically, so a killed encode leaves only whole parts: a rerun checks them
(row count and ids) and encodes what is missing; nothing half-written is trusted. The store is keyed
by everything that determines it (images, backbone, weights, size, normalisation, views), so
``data.embedding_cache`` can share one store between runs and seeds: a key mismatch is a new store.

Reading. Once a local store is complete, its parts are copied once, part by part, into one ``.npy``
file per view (each written to a temporary name and renamed; ``meta.json`` lists them last), and
every later load opens those files memory-mapped (``np.load(mmap_mode="r")``): a process holds the
rows it reads, not the archive (12.8 KB an image with 2 weak and 2 strong views at d=1280). A store
from before these files is converted on its first load; after that the ``part-*.parquet`` files are
only read again if the arrays are removed. A store on an object store (URI) is read into memory.
Rows are read with :mod:`hssal_ray.frozen.rows` (``read_rows``, ``scan_rows``, ``RowReader``,
re-exported here): ``pread`` from the view files, so the pages never enter the process.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hssal_ray import _io
from hssal_ray.errors import DataError
from hssal_ray.frozen.rows import SCAN_ROWS, RowReader, file_backed, read_rows, release, scan_rows

__all__ = [
    "EmbeddingStore",
    "open_store",
    "write_arrays",
    "view_names",
    "read_rows",
    "scan_rows",
    "RowReader",
    "release",
    "file_backed",
    "SCAN_ROWS",
    "STORE_VERSION",
]

_ENCODE_NAMES = ("store_key", "store_path", "ensure_store", "Encoder", "EncodeProgress")


def __getattr__(name: str) -> Any:
    """The encode's names (:mod:`hssal_ray.frozen.encode`), importable from here as well."""
    if name in _ENCODE_NAMES:
        from hssal_ray.frozen import encode

        return getattr(encode, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

STORE_VERSION = 1
CHUNK_ROWS = 4096


def view_names(k: int) -> tuple[str, ...]:
    """Stored views: ``none`` then ``weak_0..k-1`` and ``strong_0..k-1``."""
    return ("none", *(f"weak_{i}" for i in range(k)), *(f"strong_{i}" for i in range(k)))


class EmbeddingStore:
    """A loaded store: features of every manifest row, row-aligned with the manifest.

    Attributes:
        path: Where it lives.
        key: The store key (:func:`store_key`; "" when unknown).
        id_array: (n,) sample ids (Arrow strings).
        views: view name -> (n, d) float16 pooled features (memory-mapped for local stores).
        missing: (n,) bool, rows that could not be decoded (no features; never used).
        cache: What a run derives from the store once (standardisation statistics, the k-NN
            graph; :mod:`hssal_ray.frozen.split_cache`), kept with it for the run.
    """

    def __init__(
        self,
        path: str,
        ids: Any,
        views: dict[str, np.ndarray],
        missing: np.ndarray,
        key: str = "",
    ) -> None:
        self.path = path
        self.key = key
        self.id_array = _string_array(ids)
        self.views = views
        self.missing = np.asarray(missing, dtype=bool)
        self.cache: dict[str, Any] = {}
        self._ids: np.ndarray | None = None
        if len(self.id_array) > 1 and pc.count_distinct(self.id_array).as_py() != len(self.id_array):
            counts = pc.value_counts(self.id_array)
            dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")[0].as_py()
            raise DataError(f"embedding store {path} holds sample {dup!r} twice")

    @property
    def ids(self) -> np.ndarray:
        """(n,) sample ids as an object array of str (built on first use)."""
        if self._ids is None:
            self._ids = self.id_array.to_numpy(zero_copy_only=False).astype(object, copy=False)
        return self._ids

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.views["none"].shape[1])

    def __len__(self) -> int:
        return len(self.id_array)

    def rows_of(self, sample_ids: Any) -> np.ndarray:
        """Row indices of ``sample_ids`` (int64; a list, numpy array or Arrow array of ids).

        One Arrow hash lookup (``index_in``) against the store's ids: no Python loop over the ids.

        Raises:
            DataError: An id is not in the store.
        """
        q = _string_array(sample_ids)
        if len(q) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = pc.index_in(q, value_set=self.id_array)
        if pos.null_count:
            first = q[int(np.flatnonzero(pos.is_null().to_numpy(zero_copy_only=False))[0])].as_py()
            raise DataError(f"sample {first!r} is not in the embedding store {self.path}")
        return pos.to_numpy().astype(np.int64, copy=False)


def _string_array(ids: Any) -> pa.Array:
    """``ids`` (list, numpy array, Arrow array or chunked array) as one Arrow string array."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    if isinstance(ids, pa.Array):
        return ids if ids.type == pa.string() else ids.cast(pa.string())
    arr = np.asarray(ids, dtype=object) if not isinstance(ids, np.ndarray) else ids
    return pa.array(arr.astype(object, copy=False), type=pa.string())


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(s, min(s + CHUNK_ROWS, n)) for s in range(0, n, CHUNK_ROWS)]


def _part(path: str, i: int) -> str:
    return _io.join(path, f"part-{i:05d}.parquet")


def open_store(path: str, views: tuple[str, ...] | None = None, rows: int | None = None) -> EmbeddingStore:
    """Open a complete store (memory-mapped when local; written from its parts on first open).

    Args:
        path: The store directory.
        views: The views expected (default: those of ``meta.json``).
        rows: The rows expected (default: those of ``meta.json``).

    Raises:
        DataError: The store is incomplete, or holds other views or rows than expected.
    """
    meta_path = _io.join(path, "meta.json")
    meta = _io.read_json(meta_path) if _io.exists(meta_path) else None
    if not (meta and meta.get("complete")):
        raise DataError(f"embedding store {path} is incomplete (no complete meta.json): encode it first")
    views = tuple(meta["views"]) if views is None else views
    n = int(meta["rows"]) if rows is None else rows
    if int(meta.get("rows", n)) != n or not set(views) <= set(meta.get("views", views)):
        raise DataError(
            f"embedding store {path} holds {meta.get('rows')} rows of views {meta.get('views')}, "
            f"not {n} rows of {list(views)}: remove it or use another run directory"
        )
    key = str(meta.get("key", ""))
    if _io.is_uri(path):
        return _load_parts(path, n, views, key)
    local = path[len("file://") :] if path.startswith("file://") else path
    store = _open_arrays(local, n, views, key, meta.get("arrays"))
    if store is None:
        t0 = time.perf_counter()
        try:
            write_arrays(local, _parts_ids(local, n), _part_chunks(local, n, views), views, meta=meta)
        except PermissionError as err:  # a read-only cache: read it into memory, as a URI store
            log.warning(
                "embedding store %s: cannot write its arrays (%s): reading it into memory", local, err
            )
            return _load_parts(local, n, views, key)
        log.info(
            "embedding store %s: memory-mapped arrays written in %.1f s", local, time.perf_counter() - t0
        )
        store = _open_arrays(local, n, views, key, _io.read_json(meta_path).get("arrays"))
        if store is None:
            raise DataError(f"embedding store {local}: the arrays just written do not open; remove them")
    return store


def _view_file(path: str, view: str) -> str:
    return os.path.join(path, f"view-{view}.npy")


def _open_arrays(
    path: str, n: int, views: tuple[str, ...], key: str, arrays: dict[str, Any] | None
) -> EmbeddingStore | None:
    """The store on its memory-mapped files, or None when they are absent, partial or foreign."""
    if not arrays or int(arrays.get("rows", -1)) != n or not set(views) <= set(arrays.get("views", ())):
        return None
    try:
        opened = {}
        for v in views:
            a = np.load(_view_file(path, v), mmap_mode="r", allow_pickle=False)
            if a.dtype != np.float16 or a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"view {v}: {a.dtype} {a.shape}")
            opened[v] = a
        missing = np.load(os.path.join(path, "missing.npy"), allow_pickle=False)
        ids = pq.read_table(os.path.join(path, "ids.parquet"), columns=["sample_id"]).column("sample_id")
        if missing.shape != (n,) or len(ids) != n or len({a.shape[1] for a in opened.values()}) != 1:
            raise ValueError("row counts or widths differ")
    except (OSError, ValueError, pa.ArrowException) as err:
        log.warning("embedding store %s: memory-mapped arrays unusable (%s): writing them again", path, err)
        return None
    return EmbeddingStore(path=path, ids=ids, views=opened, missing=missing.astype(bool), key=key)


def write_arrays(
    path: str,
    ids: Any,
    chunks: Any,
    views: tuple[str, ...],
    *,
    meta: dict[str, Any],
) -> None:
    """Write a complete local store's memory-mapped files from its rows, chunk by chunk, then ``meta.json``.

    Each file goes to a temporary name (plain sequential writes: the rows pass through the page
    cache, not this process) and is renamed once whole; ``meta.json`` (``meta`` with an
    ``arrays`` entry) is written last, so a reader never opens a partial array.

    Args:
        path: The local store directory.
        ids: (n,) sample ids of every row, in order.
        chunks: Iterable of ``{view: (m, d) float16}`` blocks of consecutive rows.
        views: The views to write.
        meta: The store's ``meta.json`` content (``complete`` and ``key`` included).
    """
    ids = _string_array(ids)
    n = len(ids)
    os.makedirs(path, exist_ok=True)
    tmp = {v: _tmp_name(path, f"view-{v}.npy") for v in views}
    files: dict[str, Any] = {}
    missing = np.zeros(n, dtype=bool)
    done, dim = 0, None
    try:
        for block in chunks:
            m = len(block[views[0]])
            if done + m > n:
                raise DataError(f"embedding store {path}: more rows than its {n} ids")
            if dim is None:
                dim = int(block[views[0]].shape[1])
                for v in views:
                    files[v] = open(tmp[v], "wb")  # noqa: SIM115 - closed below, renamed once whole
                    np.lib.format.write_array_header_1_0(
                        files[v], {"descr": "<f2", "fortran_order": False, "shape": (n, dim)}
                    )
            for v in views:
                a = np.ascontiguousarray(block[v], dtype=np.float16)
                if a.shape != (m, dim):
                    raise DataError(
                        f"embedding store {path}: view {v} block of shape {a.shape}, not {(m, dim)}"
                    )
                files[v].write(memoryview(a).cast("B"))
            missing[done : done + m] = ~np.isfinite(block[views[0]]).all(1)
            done += m
        if done != n or dim is None:
            raise DataError(f"embedding store {path}: {done} rows written for {n} ids")
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for v in views:
            os.replace(tmp[v], _view_file(path, v))
    except BaseException:
        for v, f in files.items():
            f.close()
            if os.path.exists(tmp[v]):
                os.unlink(tmp[v])
        raise
    _io.atomic_write_bytes(os.path.join(path, "missing.npy"), _npy_bytes(missing))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"sample_id": ids}), sink)
    _io.atomic_write_bytes(os.path.join(path, "ids.parquet"), sink.getvalue().to_pybytes())
    arrays = {"format": "npy", "dtype": "float16", "views": list(views), "rows": n, "dim": dim}
    _io.atomic_write_json(os.path.join(path, "meta.json"), {**meta, "arrays": arrays})


def _tmp_name(path: str, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path)
    os.close(fd)
    return tmp


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _fsl_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)


def _parts_ids(path: str, n: int) -> pa.Array:
    got = [
        _io.read_parquet(_part(path, i), columns=["sample_id"]).column("sample_id")
        for i in range(len(_chunks(n)))
    ]
    ids = pa.chunked_array([c for g in got for c in g.chunks], type=pa.string())
    if len(ids) != n:
        raise DataError(f"embedding store {path}: its parts hold {len(ids)} rows, not {n}; remove it")
    return ids.combine_chunks()


def _part_chunks(path: str, n: int, views: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    for i in range(len(_chunks(n))):
        t = _io.read_parquet(_part(path, i), columns=list(views))
        yield {v: np.asarray(_fsl_numpy(t.column(v)), dtype=np.float16) for v in views}


def _load_parts(path: str, n: int, views: tuple[str, ...], key: str) -> EmbeddingStore:
    """A store on an object store, read into memory part by part."""
    ids = _parts_ids(path, n)
    out: dict[str, np.ndarray] = {}
    s = 0
    for block in _part_chunks(path, n, views):
        m = len(block[views[0]])
        for v in views:
            if v not in out:
                out[v] = np.empty((n, block[v].shape[1]), dtype=np.float16)
            out[v][s : s + m] = block[v]
        s += m
    missing = ~np.isfinite(out["none"]).all(1)
    return EmbeddingStore(path=path, ids=ids, views=out, missing=missing, key=key)
