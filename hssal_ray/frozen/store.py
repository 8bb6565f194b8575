"""The embedding store of the frozen-encoder path: every image encoded once per run (or once per cache).

With ``ssl.finetune=frozen`` the backbone never changes, so the loop encodes each image of the
manifest once: its clean view and ``ssl.embed_views`` seeded weak and strong augmented views, as
pooled backbone features (fp16). Encoding is Ray Data batch inference: decode + augment tasks feed
an actor pool holding the backbone (one actor per GPU with ``resources.use_gpu``), chunk by chunk.

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
:func:`read_rows` and :func:`scan_rows` read rows of a view into float32 and drop the pages they
touched from the process (``madvise(MADV_DONTNEED)``; the page cache keeps them), so a pass over
every row of a 1M-image view does not leave 2.6 GB resident.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
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

__all__ = [
    "EmbeddingStore",
    "store_key",
    "store_path",
    "ensure_store",
    "open_store",
    "write_arrays",
    "view_names",
    "read_rows",
    "scan_rows",
    "RowReader",
    "release",
    "file_backed",
    "STORE_VERSION",
]

log = logging.getLogger(__name__)

STORE_VERSION = 1
CHUNK_ROWS = 4096
SCAN_ROWS = 8192
"""Rows per float32 block of :func:`scan_rows` (40 MB at d=1280)."""


def view_names(k: int) -> tuple[str, ...]:
    """Stored views: ``none`` then ``weak_0..k-1`` and ``strong_0..k-1``."""
    return ("none", *(f"weak_{i}" for i in range(k)), *(f"strong_{i}" for i in range(k)))


def store_key(cfg: Any, ids: pa.ChunkedArray | pa.Array, root: str) -> str:
    """Hash of what determines the embeddings: images (root + manifest ids), backbone, weights, input."""
    from hssal_ray.weights import normalisation

    h = hashlib.blake2b(digest_size=10)
    mean, std = normalisation(cfg)
    spec = dict(
        version=STORE_VERSION,
        root=os.path.abspath(root) if not _io.is_uri(root) else root,
        model=cfg.ssl.model,
        weights=cfg.ssl.weights,
        hub=cfg.ssl.pretrained_hub,
        kwargs=cfg.ssl.model_kwargs,
        bands=cfg.data.bands,
        size=cfg.data.image_size,
        mean=mean,
        std=std,
        views=cfg.ssl.embed_views,
    )
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for chunk in pa.chunked_array([ids]).chunks if isinstance(ids, pa.Array) else ids.chunks:
        for buf in chunk.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    return h.hexdigest()


def store_path(cfg: Any, run_dir: str, key: str) -> str:
    """``data.embedding_cache/<key>`` when a cache is configured, else ``RUN/embeddings``."""
    if cfg.data.embedding_cache:
        return _io.join(cfg.data.embedding_cache, key)
    return _io.join(run_dir, "embeddings")


class EmbeddingStore:
    """A loaded store: features of every manifest row, row-aligned with the manifest.

    Attributes:
        path: Where it lives.
        key: The store key (:func:`store_key`; "" when unknown).
        id_array: (n,) sample ids (Arrow strings).
        views: view name -> (n, d) float16 pooled features (memory-mapped for local stores).
        missing: (n,) bool, rows that could not be decoded (no features; never used).
        cache: What a run derives from the store once (standardisation statistics, the k-NN
            graph; :mod:`hssal_ray.frozen.rounds`), kept with it for the run.
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


# ------------------------------------------------------------------------------ reading rows


def release(view: np.ndarray) -> None:
    """Drop the pages of a memory-mapped view from this process (they stay in the page cache)."""
    mm = getattr(view, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a kernel without it: nothing held to drop
            pass


def file_backed(view: np.ndarray) -> bool:
    """Whether :func:`read_rows` reads ``view`` with ``pread`` (a view mapping a whole ``.npy`` file)."""
    return _file_of(view) is not None


def _file_of(view: np.ndarray) -> tuple[str, int] | None:
    """``(path, offset of row 0)`` of a view that maps a whole ``.npy`` file (``np.load(mmap_mode=...)``)."""
    if (
        isinstance(view, np.memmap)
        and isinstance(view.base, mmap.mmap)  # the file's own mapping, not a slice of it
        and view.filename
        and view.flags.c_contiguous
    ):
        return str(view.filename), int(view.offset)
    return None


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of the runs of consecutive rows in ``rows``."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])


def read_rows(
    view: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None, fds: dict[str, int] | None = None
) -> np.ndarray:
    """float16 rows ``rows`` of a view, copied (into ``out`` when given).

    A view mapping a ``.npy`` file is read with ``pread``, one call per run of consecutive rows:
    the file's pages pass through the page cache into ``out`` and are never mapped into this
    process (``fds`` caches the open files; without it the file is opened for this call). Other
    arrays are indexed.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if out is None:
        out = np.empty((len(rows), view.shape[1]), dtype=np.float16)
    if len(rows) == 0:
        return out
    where = _file_of(view) if view.dtype == out.dtype and out.flags.c_contiguous else None
    if where is None:
        if int(rows[-1]) - int(rows[0]) == len(rows) - 1 and bool((np.diff(rows) == 1).all()):
            np.copyto(out, view[int(rows[0]) : int(rows[-1]) + 1])
        else:
            np.take(view, rows, axis=0, out=out)
        return out
    path, offset = where
    own = fds is None
    fds = {} if fds is None else fds
    fd = fds.get(path)
    if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    try:
        row_bytes = out.strides[0]
        buf = memoryview(out).cast("B")
        starts, ends = _runs(rows)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            pos, lo, hi = offset + int(rows[a]) * row_bytes, a * row_bytes, b * row_bytes
            while lo < hi:  # pread may return less than asked for
                got = os.preadv(fd, [buf[lo:hi]], pos)
                if got <= 0:
                    raise OSError(f"{path}: short read at byte {pos}")
                lo, pos = lo + got, pos + got
    finally:
        if own:
            os.close(fd)
    return out


class RowReader:
    """Reads rows of views into two reused buffers: float16, then float32 through torch's vectorised
    conversion (numpy's float16 cast is several times slower). A view mapping a file is read with
    ``pread`` (:func:`read_rows`; the files stay open while the reader lives); any other mapped
    view has its pages dropped after each read (:func:`release`). The returned buffers are
    overwritten by the next read.

    Args:
        dim: Feature width.
        rows: The most rows one read returns.
    """

    def __init__(self, dim: int, rows: int) -> None:
        import torch

        self.h = np.empty((max(1, rows), dim), dtype=np.float16)
        self.f = torch.empty((max(1, rows), dim), dtype=torch.float32)
        self.fds: dict[str, int] = {}

    def read16(self, view: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float16 ``(len(rows), dim)`` rows of ``view`` (in the reused buffer)."""
        m = len(rows)
        read_rows(view, rows, self.h[:m], self.fds)
        if _file_of(view) is None:
            release(view)
        return self.h[:m]

    def read(self, view: np.ndarray, rows: np.ndarray) -> Any:
        """float32 torch ``(len(rows), dim)`` rows of ``view``."""
        import torch

        m = len(rows)
        return self.f[:m].copy_(torch.from_numpy(self.read16(view, rows)))

    def close(self) -> None:
        """Close the files opened for reading."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


def scan_rows(view: np.ndarray, rows: np.ndarray, chunk: int = SCAN_ROWS) -> Iterator[tuple[int, Any]]:
    """``(start, x)`` for consecutive blocks of ``rows``: ``x`` holds rows ``rows[start:start+len(x)]``.

    ``x`` is a float32 torch tensor read by a :class:`RowReader`: use (or copy) it before asking
    for the next block.
    """
    rows = np.asarray(rows, dtype=np.int64)
    reader = RowReader(view.shape[1], min(chunk, len(rows)))
    for s in range(0, len(rows), chunk):
        yield s, reader.read(view, rows[s : s + chunk])


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(s, min(s + CHUNK_ROWS, n)) for s in range(0, n, CHUNK_ROWS)]


def _part(path: str, i: int) -> str:
    return _io.join(path, f"part-{i:05d}.parquet")


def _part_ok(path: str, i: int, ids: list[str], views: tuple[str, ...]) -> bool:
    p = _part(path, i)
    if not _io.exists(p):
        return False
    try:
        t = _io.read_parquet(p, columns=["sample_id"])
        fs, inner = _io.resolve_fs(p)
        with fs.open_input_file(inner) as f:
            schema = pq.read_schema(f)
    except Exception as err:  # a foreign or damaged file: encode the chunk again
        log.warning("embedding store part %s is unreadable (%s): encoding it again", p, err)
        return False
    return t.column("sample_id").to_pylist() == ids and all(v in schema.names for v in views)


def ensure_store(cfg: Any, catalog: Any, run_dir: str, progress: Any = None) -> EmbeddingStore:
    """Encode what the store lacks (Ray Data actor pool), then open it.

    Args:
        cfg: The experiment config (``ssl.finetune=frozen``).
        catalog: The run's manifest (every split is encoded).
        run_dir: The run directory (bad samples are listed there).
        progress: Called with one line per encoded chunk and one per finished encode (default: log).
    """
    table = catalog.table
    key = store_key(cfg, table.column("sample_id"), catalog.root)
    path = store_path(cfg, run_dir, key)
    views = view_names(cfg.ssl.embed_views)
    meta_path = _io.join(path, "meta.json")
    n = table.num_rows
    meta = _io.read_json(meta_path) if _io.exists(meta_path) else None
    if meta is not None and meta.get("key") != key:
        raise DataError(
            f"embedding store {path} was built for other inputs (key {meta.get('key')} != {key}); "
            "remove it or use another run directory"
        )
    if not (meta and meta.get("complete")):
        ids_all = table.column("sample_id").to_pylist()
        todo = [i for i, (s, e) in enumerate(_chunks(n)) if not _part_ok(path, i, ids_all[s:e], views)]
        if todo:
            _encode(cfg, catalog, run_dir, path, todo, views, progress)
        meta = {
            "key": key,
            "version": STORE_VERSION,
            "model": cfg.ssl.model,
            "weights": cfg.ssl.weights,
            "image_size": cfg.data.image_size,
            "views": list(views),
            "rows": n,
            "chunks": len(_chunks(n)),
            "complete": True,
        }
        _io.atomic_write_json(meta_path, meta)
    return open_store(path, views=views, rows=n)


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


class Encoder:
    """Ray Data actor: the frozen backbone in memory; decoded views -> pooled fp16 features."""

    def __init__(self, experiment: dict[str, Any], views: tuple[str, ...]) -> None:
        import torch

        from hssal_ray.config import config_from_dict
        from hssal_ray.models import model_from_config

        cfg = config_from_dict(experiment)
        self.views = views
        self.device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        torch.manual_seed(0)  # a backbone without pretrained weights is the same in every actor and run
        self.backbone = model_from_config(cfg, num_classes=1).backbone.eval().to(self.device)
        self.amp = torch.bfloat16 if (self.device.type == "cuda" and cfg.ssl.amp != "none") else None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        cols: dict[str, Any] = {"sample_id": pa.array([str(s) for s in batch["sample_id"]], pa.string())}
        with torch.inference_mode():
            for v in self.views:
                x = torch.from_numpy(np.ascontiguousarray(batch[f"x_{v}"])).to(self.device)
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    f = self.backbone(x).float().cpu().numpy().astype(np.float16)
                cols[v] = pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), f.shape[1])
        return pa.table(cols)


class EncodeProgress:
    """The encode's progress: a tqdm bar on a terminal, else text lines with the rate and the ETA.

    Without a terminal (a batch job, ``nohup``, a log file) a line is printed when a chunk of the
    store is written and, within a chunk, at most every ``interval`` seconds as batches come back::

        [hssal] encode: 8192/2100000 images (chunk 2/513), 2.9 img/s, ETA 8 d 7 h

    Args:
        total: Images to encode in this call.
        chunks: Chunks to encode in this call.
        emit: Called with each line.
        tty: Whether stderr is a terminal (default: ask it).
        interval: Seconds between lines within a chunk.
        clock: Seconds now (tests pass a fake clock).
    """

    def __init__(
        self,
        total: int,
        chunks: int,
        emit: Any,
        *,
        tty: bool | None = None,
        interval: float = 30.0,
        clock: Any = time.perf_counter,
    ) -> None:
        import sys

        self.total, self.chunks, self.emit = total, chunks, emit
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval, self.clock = interval, clock
        self.t0 = self.last = clock()
        self.done = self.chunk_base = self.chunks_done = 0
        self.bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="encode", unit="img", leave=False)

    def batch(self, rows: int) -> None:
        """``rows`` more images of the current chunk came back."""
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        elif self.clock() - self.last >= self.interval:
            self._line()

    def chunk(self, rows: int) -> None:
        """The current chunk (``rows`` images) is written."""
        self.chunks_done += 1
        self.chunk_base += rows
        if self.bar is not None:
            self.bar.update(self.chunk_base - self.done)
        self.done = self.chunk_base
        if self.bar is None:
            self._line()

    def close(self) -> float:
        """Close the bar; returns the seconds since the start."""
        if self.bar is not None:
            self.bar.close()
        return self.clock() - self.t0

    def _line(self) -> None:
        now = self.clock()
        self.last = now
        secs = now - self.t0
        rate = self.done / secs if secs > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        self.emit(
            f"[hssal] encode: {self.done}/{self.total} images (chunk {min(self.chunks_done + 1, self.chunks)}"
            f"/{self.chunks}{', written' if self.done == self.chunk_base else ''}), "
            f"{rate:.1f} img/s, ETA {eta}"
        )


def _duration(secs: float) -> str:
    secs = max(0.0, secs)
    if secs < 120:
        return f"{secs:.0f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    if secs < 172800:
        return f"{int(secs // 3600)} h {int(secs % 3600 // 60)} min"
    return f"{int(secs // 86400)} d {int(secs % 86400 // 3600)} h"


def _encode(
    cfg: Any,
    catalog: Any,
    run_dir: str,
    path: str,
    todo: list[int],
    views: tuple[str, ...],
    progress: Any,
) -> None:
    import ray
    import ray.data

    from hssal_ray.config import config_to_dict
    from hssal_ray.data.pipeline import collect_bad_samples, stream_for
    from hssal_ray.scoring import actor_pool_size

    table = catalog.table
    n = table.num_rows
    actors = actor_pool_size(
        cfg.resources.score_actors, float(ray.cluster_resources().get("CPU", 0.0)), cfg.resources.use_gpu
    )
    chunks = _chunks(n)
    rows = sum(chunks[i][1] - chunks[i][0] for i in todo)
    emit = progress or log.info
    bar = EncodeProgress(rows, len(todo), emit)
    for i in todo:
        s, e = chunks[i]
        part = table.slice(s, e - s).select(["sample_id", "source", "row", "label"])
        # per-image augmentation seeds from the manifest position: the same views for every run
        part = part.append_column("aug_seed", pa.array(np.arange(s, e, dtype=np.int64) * 7919 + 17))
        ds = stream_for(cfg, part, root=catalog.root, kind=catalog.kind, views=views, run_dir=run_dir)
        ds = ds.map_batches(
            Encoder,
            fn_constructor_kwargs=dict(experiment=config_to_dict(cfg), views=views),
            batch_size=cfg.ssl.eval_batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if cfg.resources.use_gpu else 0,
            num_cpus=1,
        )
        got = []
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # as actors finish them
            got.append(block)
            bar.batch(block.num_rows)
        out = pa.concat_tables(got) if got else None
        _io.makedirs(path)
        _io.atomic_write_parquet(_part(path, i), _align(part, out, views))
        bar.chunk(e - s)
    secs = bar.close()
    collect_bad_samples(run_dir)
    rate = rows / max(secs, 1e-9)
    emit(f"[hssal] encoded {rows} images x {len(views)} views in {secs:.1f} s ({rate:.1f} img/s)")


def _align(part: pa.Table, out: pa.Table | None, views: tuple[str, ...]) -> pa.Table:
    """The chunk's rows in manifest order; undecodable rows get NaN features (``EmbeddingStore.missing``)."""
    ids = part.column("sample_id").to_pylist()
    if out is None or out.num_rows == 0:
        raise DataError(f"no image of {len(ids)} could be decoded (first: {ids[:3]}); see bad_samples.csv")
    pos = {s: i for i, s in enumerate(out.column("sample_id").to_pylist())}
    width = out.schema.field(views[0]).type.list_size
    cols: dict[str, Any] = {"sample_id": pa.array(ids, pa.string())}
    take = np.array([pos.get(s, -1) for s in ids], dtype=np.int64)
    for v in views:
        arr = _fsl_numpy(out.column(v))
        full = np.full((len(ids), width), np.nan, dtype=np.float16)
        ok = take >= 0
        full[ok] = arr[take[ok]]
        cols[v] = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), width)
    return pa.table(cols)
