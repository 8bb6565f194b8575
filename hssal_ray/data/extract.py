"""Safe extraction of zip and tar archives: every member is checked before anything is written.

Absolute paths, ``..`` components and links pointing outside the root raise
:class:`~hssal_ray.errors.DownloadError` naming the member; extraction goes to a temporary folder
inside the root, then is moved into place. RAR is out of scope (a clear error says how to extract
it by hand).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile

from hssal_ray.errors import DownloadError

_CHUNK = 1 << 20
_ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".rar")


def _member_target(name: str, dest: str) -> str:
    """Where a member would land, or DownloadError if it escapes ``dest``."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise DownloadError(f"unsafe archive member {name!r}: absolute path")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"unsafe archive member {name!r}: '..' in path")
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, *parts)) if parts else root
    if target != root and not target.startswith(root + os.sep):
        raise DownloadError(f"unsafe archive member {name!r}: resolves outside the extraction root")
    return target


def _check_link(name: str, link: str, dest: str) -> None:
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise DownloadError(f"unsafe archive member {name!r}: link to absolute path {link!r}")
    base = os.path.dirname(_member_target(name, dest))
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(base, link))
    if target != root and not target.startswith(root + os.sep):
        raise DownloadError(
            f"unsafe archive member {name!r}: link {link!r} points outside the extraction root"
        )


def _archive_kind(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return "unknown"


def safe_extract(archive: str, dest: str) -> None:
    """Extract a zip or tar archive into ``dest``, refusing any member that would escape it.

    All members are validated before the first byte is written.

    Raises:
        DownloadError: Unsafe member (named in the message), RAR or unknown archive format.
    """
    kind = _archive_kind(archive)
    os.makedirs(dest, exist_ok=True)
    if kind == "rar":
        raise DownloadError(
            f"{archive} is a RAR archive: RAR extraction is out of scope; extract it by hand "
            f"(`unrar x {archive} {dest}/` or `7z x {archive} -o{dest}`)"
        )
    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
            links = {}
            for info in infos:
                _member_target(info.filename, dest)
                if stat.S_ISLNK(info.external_attr >> 16):
                    links[info.filename] = z.read(info).decode("utf-8", "replace")
                    _check_link(info.filename, links[info.filename], dest)
            for info in infos:
                target = _member_target(info.filename, dest)
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if info.filename in links:
                    os.symlink(links[info.filename], target)
                    continue
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        return
    if kind == "tar":
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                _member_target(m.name, dest)
                if m.issym():
                    _check_link(m.name, m.linkname, dest)
                elif m.islnk():  # hard link names another member, relative to the archive root
                    try:
                        _member_target(m.linkname, dest)
                    except DownloadError as e:
                        raise DownloadError(
                            f"unsafe archive member {m.name!r}: hard link {m.linkname!r}"
                        ) from e
                elif not (m.isfile() or m.isdir()):
                    raise DownloadError(
                        f"unsafe archive member {m.name!r}: device, fifo or other special file"
                    )
            t.extractall(dest, members=members, filter="data")
        return
    raise DownloadError(f"{archive} is not a zip or tar archive")
