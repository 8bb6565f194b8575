"""Where a lease lives: the lease file on a POSIX file system, or an object on ``s3://``/``gs://``.

Both stores answer the same small protocol (read, create-if-absent, refresh, take over, the
store's clock); see :mod:`hssal_ray.loop.lease` for what each guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from hssal_ray import _io
from hssal_ray.errors import LeaseError

log = logging.getLogger(__name__)

_LOCK_WAIT_S = 10.0  # how long a takeover or release waits for lease.json.lock
_STALE_LOCK_S = 30.0  # a lock this old was left by a driver that died while holding it
_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


# --------------------------------------------------------------------------- where it lives


class _Store(Protocol):
    def read(self) -> tuple[bytes, float] | None: ...
    def create(self, data: bytes) -> bool: ...
    def refresh(self, data: bytes) -> None: ...
    def take(self, data: bytes, mtime: float | None) -> bool: ...
    def now(self) -> float: ...


class _LocalStore:
    """The lease file on a local or shared POSIX file system."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def _side(self, tag: str) -> str:
        return f"{self.path}.{uuid.uuid4().hex[:12]}.{tag}"

    def read(self) -> tuple[bytes, float] | None:
        try:
            with open(self.path, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None

    def _write(self, path: str, data: bytes, flags: int) -> None:
        """Create ``path`` (``O_EXCL``: it is ours) holding ``data``; on any failure it is removed again.

        A full disk fails the write after the create: a file left behind would be a stray
        ``lease.json.<id>.new``, or an empty lease file that blocks the next driver.
        """
        fd = os.open(path, flags, 0o644)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    def create(self, data: bytes) -> bool:
        """Create the lease file holding ``data`` unless it exists (atomic)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self._side("new")
        self._write(tmp, data, _EXCL)
        try:
            os.link(tmp, self.path)  # appears fully written, or not at all
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        try:  # no hard links on this file system
            self._write(self.path, data, _EXCL)
            return True
        except FileExistsError:
            return False

    def refresh(self, data: bytes) -> None:
        os.utime(self.path)  # only the time: a racing new owner's content is never overwritten

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``lease.json.lock`` (atomic create): the only place a lease file is ever removed.

        Creating a lease needs no lock (a create fails while any lease file exists), so a
        takeover or release that verifies the file under this lock removes exactly the file it
        judged, never one a racing driver has just created.
        """
        lock = self.path + ".lock"
        deadline = time.monotonic() + _LOCK_WAIT_S
        held = False
        try:
            while True:
                try:
                    fd = os.open(lock, _EXCL, 0o644)  # the lock is the file's existence
                except FileExistsError:
                    pass
                else:
                    held = True
                    try:  # who holds it, for a person who finds it; a full disk leaves it empty
                        with contextlib.suppress(OSError):
                            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                    finally:
                        os.close(fd)
                    break
                try:
                    age = self.now() - os.stat(lock).st_mtime
                except FileNotFoundError:
                    continue
                if age > _STALE_LOCK_S:  # its holder died inside the few-millisecond section below
                    log.warning("removing the stale lock file %s (%.0f s old)", lock, age)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                    continue
                if time.monotonic() > deadline:
                    raise LeaseError(
                        f"{lock} has been locked for {age:.0f} s; retry, or remove it if no driver runs"
                    )
                time.sleep(0.01)
            yield
        finally:
            if held:  # removed on every way out, also when the body or a signal raises
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)

    def take(self, data: bytes, mtime: float | None) -> bool:
        """Remove the lease file if it still holds ``data`` (and, if given, still has ``mtime``)."""
        with self._locked():
            cur = self.read()
            if cur is None:
                return True
            if cur[0] != data or (mtime is not None and cur[1] != mtime):
                return False  # refreshed, or replaced by another driver meanwhile
            os.unlink(self.path)
            return True

    def now(self) -> float:
        """The file system's current time (the mtime of a file written now)."""
        probe = self._side("clock")
        try:
            self._write(probe, b"", _EXCL)
            return os.stat(probe).st_mtime
        except OSError:
            return time.time()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)


class _ObjectStore:
    """The lease object on ``s3://``/``gs://`` (any pyarrow file system): best effort, see the module doc."""

    def __init__(self, fs: Any, path: str, settle_s: float = 1.5) -> None:
        self.fs, self.path, self.settle_s = fs, path, settle_s

    def read(self) -> tuple[bytes, float] | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            with self.fs.open_input_file(self.path) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, (info.mtime.timestamp() if info.mtime is not None else 0.0)

    def _put(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def create(self, data: bytes) -> bool:
        if self.read() is not None:
            return False
        parent = self.path.rsplit("/", 1)[0]
        if parent:
            self.fs.create_dir(parent, recursive=True)
        self._put(self.path, data)
        time.sleep(self.settle_s)  # a racing driver's PUT lands meanwhile: the later one wins
        cur = self.read()
        return cur is not None and cur[0] == data

    def refresh(self, data: bytes) -> None:
        self._put(self.path, data)  # a new PUT is the new modification time

    def take(self, data: bytes, mtime: float | None) -> bool:
        cur = self.read()
        if cur is None:
            return True
        if cur[0] != data or (mtime is not None and cur[1] != mtime):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)
        return True

    def now(self) -> float:
        probe = f"{self.path}.{uuid.uuid4().hex[:12]}.clock"
        try:
            self._put(probe, b"")
            info = self.fs.get_file_info(probe)
            return info.mtime.timestamp() if info.mtime is not None else time.time()
        except OSError:
            return time.time()
        finally:
            with contextlib.suppress(OSError):
                self.fs.delete_file(probe)


def _store_for(path: str) -> _Store:
    if _io.is_uri(path):
        fs, p = _io.resolve_fs(path)
        return _ObjectStore(fs, p)
    if path.startswith("file://"):
        path = _io.resolve_fs(path)[1]
    return _LocalStore(path)
