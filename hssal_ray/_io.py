"""Atomic, URI-aware file I/O used for every piece of run state.

Every write goes to a temporary file next to the target and is then renamed over it, so a
reader (or a resumed run after a SIGKILL) sees either the old content or the new one, never a
torn file. Paths may be local paths or any URI pyarrow understands (``s3://``, ``gs://``,
``file://``); on object stores a single PUT is already atomic.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "is_uri",
    "resolve_fs",
    "join",
    "exists",
    "is_dir",
    "makedirs",
    "read_bytes",
    "read_text",
    "read_json",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_parquet",
    "read_parquet",
    "listdir",
    "remove",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` paths other than plain ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def resolve_fs(path: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path_inside_it)`` for a local path or URI."""
    path = str(path)
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for URIs and ``os.path.join`` for local paths."""
    base = str(base)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    """Whether a file or directory exists."""
    fs, p = resolve_fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    """Create a directory and its parents (no-op on object stores that have no directories)."""
    fs, p = resolve_fs(path)
    fs.create_dir(p, recursive=True)


def is_dir(path: str) -> bool:
    """Whether ``path`` is a directory."""
    fs, p = resolve_fs(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def listdir(path: str) -> list[str]:
    """Base names in a directory, sorted; empty if it does not exist."""
    fs, p = resolve_fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(os.path.basename(i.path) for i in infos)


def remove(path: str) -> None:
    """Remove a file if it exists."""
    fs, p = resolve_fs(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.File:
        fs.delete_file(p)
    elif info.type == pafs.FileType.Directory:
        fs.delete_dir(p)


def read_bytes(path: str) -> bytes:
    """Read a whole file."""
    fs, p = resolve_fs(path)
    with fs.open_input_file(p) as f:
        return f.read()


def read_text(path: str) -> str:
    """Read a whole UTF-8 text file."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """Read a JSON file."""
    return json.loads(read_text(path))


def _naming(e: OSError, path: str) -> OSError:
    """``e`` with ``filename`` = the file being written (``write``/``fsync`` errors name none)."""
    if e.errno is None or e.filename == path:
        return e
    return OSError(e.errno, e.strerror, path)


@contextmanager
def _atomic_local(path: str) -> Iterator[io.BufferedWriter]:
    """A temp file next to ``path``, renamed over it on success and removed on any failure.

    An ``OSError`` (disk full, read-only file system, no permission) names ``path`` itself in
    ``filename``, so the command line can say which write failed.
    """
    d = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give files the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    path = str(path)
    if "://" in path:
        fs, p = resolve_fs(path)
        parent = p.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        if is_uri(path):
            with fs.open_output_stream(p) as f:  # one PUT: atomic on object stores
                f.write(data)
            return
        path = p
    with _atomic_local(path) as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write an object as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_parquet(path: str, table: pa.Table) -> None:
    """Write a pyarrow Table as one Parquet file atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or directory of Parquet files from a local path or URI."""
    fs, p = resolve_fs(path)
    return pq.read_table(p, filesystem=fs, columns=columns)


def parquet_columns(path: str) -> list[str]:
    """The column names of a Parquet file (its footer only), local path or URI."""
    fs, p = resolve_fs(path)
    with fs.open_input_file(p) as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def unique_name(prefix: str = "part", suffix: str = "") -> str:
    """A collision-free file name for writers running in parallel workers."""
    return f"{prefix}-{uuid.uuid4().hex}{suffix}"
