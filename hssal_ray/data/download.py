"""Download and safely extract RS scene datasets (``python -m hssal_ray.data.download NAME --root DIR``).

``NAME`` is ``ucm``, ``aid`` or ``nwpu`` (:data:`DATASETS`).

* Resumable: bytes go to ``<archive>.part``; a re-run asks for the rest with an HTTP ``Range`` header
  and restarts from zero if the server ignores it.
* Verified: SHA-256 (``--sha256`` or the registry's), else the registry's MD5 (second-hand, from
  torchgeo). With no known checksum the digest is printed and ``--sha256`` or ``--no-verify`` must be
  given explicitly: checksums are never guessed.
* Safe extraction of zip and tar: every member is checked *before* anything is written; absolute
  paths, ``..`` components and links pointing outside the root raise :class:`DownloadError` naming the
  member. Extraction goes to a temporary folder inside the root, then is moved into place. RAR is out
  of scope (a clear error says how to extract it by hand).
* Idempotent: a marker file records a finished, verified extraction; a re-run says so and stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import urllib.parse
import zipfile
from collections.abc import Sequence
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from hssal_ray.errors import DownloadError, HSSALError

__all__ = ["DatasetSpec", "DATASETS", "DownloadResult", "download_dataset", "fetch", "safe_extract", "main"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".rar")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One downloadable dataset.

    Args:
        name: Registry key.
        title: Human name.
        urls: Direct download URLs, tried in order (empty: no direct link exists).
        filename: Archive file name.
        sha256: Expected SHA-256, or ``None`` if not verified by us.
        md5: Expected MD5 as published by torchgeo (second-hand), or ``None``.
        data_dir: ImageFolder root relative to the download root after extraction.
        num_classes: Expected class folders.
        num_images: Expected images.
        homepage: Official page.
        manual: How to get the archive when there is no direct link (or it is a RAR).
    """

    name: str
    title: str
    urls: tuple[str, ...]
    filename: str
    sha256: str | None
    md5: str | None
    data_dir: str
    num_classes: int
    num_images: int
    homepage: str
    manual: str = ""


DATASETS: dict[str, DatasetSpec] = {
    # Official URL (the dataset's page links it); the torchgeo Hugging Face mirror serves the same
    # archive. MD5 from torchgeo (microsoft/torchgeo, torchgeo/datasets/ucmerced.py); no SHA-256 was
    # verified here, so none is stored.
    "ucm": DatasetSpec(
        name="ucm",
        title="UC Merced Land Use",
        urls=(
            "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
            "https://huggingface.co/datasets/torchgeo/ucmerced/resolve/main/UCMerced_LandUse.zip",
        ),
        filename="UCMerced_LandUse.zip",
        sha256=None,
        md5="5b7ec56793786b6dc8a908e8854ac0e4",
        data_dir="UCMerced_LandUse/Images",
        num_classes=21,
        num_images=2100,
        homepage="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
    ),
    # AID's official page only links Baidu Pan and OneDrive share pages (no direct file URL), so
    # there is no default URL and no checksum: download AID.zip by hand and pass --url file://...
    "aid": DatasetSpec(
        name="aid",
        title="AID: Aerial Image Dataset",
        urls=(),
        filename="AID.zip",
        sha256=None,
        md5=None,
        data_dir="AID",
        num_classes=30,
        num_images=10000,
        homepage="https://captain-whu.github.io/AID/",
        manual=(
            "AID has no direct download link: its official page https://captain-whu.github.io/AID/ links "
            "Baidu Pan (https://pan.baidu.com/s/1mifOBv6) and OneDrive "
            "(https://1drv.ms/u/s!AthY3vMZmuxChNR0Co7QHpJ56M-SvQ). "
            "Download AID.zip in a browser, then run again with --url file:///path/to/AID.zip and "
            "--sha256 <digest you trust> (or --no-verify)."
        ),
    ),
    # The official NWPU-RESISC45 release is a RAR on OneDrive (out of scope); torchgeo's Hugging Face
    # mirror re-packs it as a zip (URL pinned to a commit, MD5 from microsoft/torchgeo,
    # torchgeo/datasets/resisc45.py). No SHA-256 was verified here.
    "nwpu": DatasetSpec(
        name="nwpu",
        title="NWPU-RESISC45",
        urls=(
            "https://hf.co/datasets/torchgeo/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f/NWPU-RESISC45.zip",
        ),
        filename="NWPU-RESISC45.zip",
        sha256=None,
        md5="75206b2e16446591afa88e2628744886",
        data_dir="NWPU-RESISC45",
        num_classes=45,
        num_images=31500,
        homepage="https://gcheng-nwpu.github.io/",
        manual="The official release is NWPU-RESISC45.rar on OneDrive: extract it with unrar or 7z.",
    ),
}


@dataclasses.dataclass(frozen=True)
class DownloadResult:
    """Outcome of :func:`download_dataset`.

    Args:
        name: Dataset key.
        data_dir: The ImageFolder root to use as ``data.root``.
        archive: Path of the downloaded archive.
        sha256: SHA-256 of the archive.
        already: True if a previous run had finished and nothing was done.
        verified: Whether the archive's checksum was verified (``False`` after ``--no-verify``).
    """

    name: str
    data_dir: str
    archive: str
    sha256: str
    already: bool
    verified: bool = True


def file_digest(path: str, algo: str = "sha256") -> str:
    """Hex digest of a file, streamed."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str, *, progress: bool = True, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest``, resuming from ``dest + '.part'`` when present.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final path; written only when the download is complete.
        progress: Show a tqdm bar on stderr.
        timeout: Socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        DownloadError: HTTP error, unreachable host, or an interrupted transfer (the ``.part``
            file is kept: re-run to resume).
    """
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "hssal_ray-download/0.1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete
            log.info("%s: server says the partial file is complete", url)
            os.replace(part, dest)
            return dest
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from e
    except (URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot download {url}: {e}") from e
    with resp:
        status = getattr(resp, "status", None) or 200
        length = resp.headers.get("Content-Length")
        start = 0
        if have and status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else -1
        if have and start != have:
            log.info("%s: server ignored the Range request: restarting from zero", url)
            have = 0
        total = have + int(length) if length is not None else None
        bar_args = dict(unit="B", unit_scale=True, desc=os.path.basename(dest), file=sys.stderr)
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(total=total, initial=have, disable=not progress, **bar_args) as bar,
        ):
            while True:
                try:
                    block = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(
                        f"download of {url} interrupted after {have} bytes ({e}); run again to resume"
                    ) from e
                if not block:
                    break
                f.write(block)
                have += len(block)
                bar.update(len(block))
    if total is not None and have < total:
        raise DownloadError(
            f"download of {url} interrupted after {have} of {total} bytes; run again to resume"
        )
    os.replace(part, dest)
    return dest


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


def _url_filename(url: str, default: str) -> str:
    base = os.path.basename(urllib.parse.urlparse(url).path)
    return base if base.lower().endswith(_ARCHIVE_EXTS) else default


def _count(data_dir: str) -> tuple[int, int]:
    classes = [
        d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith(".")
    ]
    images = sum(
        1
        for c in classes
        for _, _, files in os.walk(os.path.join(data_dir, c))
        for f in files
        if f.lower().endswith((".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    )
    return len(classes), images


def _verify(spec: DatasetSpec, archive: str, sha256: str | None, verify: bool) -> str:
    digest = file_digest(archive)
    if not verify:
        log.warning("%s: checksum NOT verified (--no-verify); sha256 %s", archive, digest)
        return digest
    expected = (sha256 or spec.sha256 or "").lower() or None
    if expected is not None:
        if digest != expected:
            os.remove(archive)
            raise DownloadError(
                f"sha256 mismatch for {archive}: expected {expected}, got {digest}; the file was removed"
            )
        return digest
    if spec.md5 is not None:
        md5 = file_digest(archive, "md5")
        if md5 != spec.md5:
            raise DownloadError(
                f"md5 mismatch for {archive}: expected {spec.md5} (torchgeo's), got {md5} (sha256 {digest}); "
                "delete the file to download it again, or if it is a different but trusted archive pass "
                "--sha256 (or --no-verify)"
            )
        return digest
    raise DownloadError(
        f"no known checksum for {spec.name}: the downloaded {archive} has sha256 {digest}; check it "
        "against a trusted source and run again with --sha256 <digest>, or with --no-verify"
    )


def download_dataset(
    name: str,
    root: str,
    *,
    url: str | None = None,
    sha256: str | None = None,
    verify: bool = True,
    progress: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Download, verify and extract a registered dataset into ``root`` (a local folder).

    Args:
        name: ``ucm``, ``aid`` or ``nwpu``.
        root: Download and extraction folder.
        url: Mirror URL overriding the registry's (``http(s)://`` or ``file://``).
        sha256: Expected SHA-256 (overrides the registry's checksums).
        verify: ``False`` skips checksum verification (the digest is still logged).
        progress: Show progress bars.
        timeout: Socket timeout in seconds.

    Returns:
        A :class:`DownloadResult` whose ``data_dir`` is the ImageFolder root.

    Raises:
        DownloadError: Unknown name, no URL, network error, checksum mismatch, unsafe archive.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    urls = (url,) if url else spec.urls
    if not urls:
        raise DownloadError(spec.manual or f"{spec.title} has no download URL: pass --url")
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, f".hssal_download_{name}.json")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if os.path.isdir(done.get("data_dir", "")) and (
            sha256 is None or sha256.lower() == done.get("sha256")
        ):
            verified = bool(done.get("verified", True))
            return DownloadResult(name, done["data_dir"], done["archive"], done["sha256"], True, verified)
    archive = os.path.join(root, _url_filename(urls[0], spec.filename))
    if not os.path.exists(archive):
        errors = []
        for u in urls:
            try:
                fetch(u, archive, progress=progress, timeout=timeout)
                break
            except DownloadError as e:
                errors.append(str(e))
                log.warning("%s", e)
        else:
            raise DownloadError(f"could not download {spec.title}: " + " | ".join(errors))
    digest = _verify(spec, archive, sha256, verify)
    if _archive_kind(archive) == "rar":
        raise DownloadError(
            f"{archive} is a RAR archive (verified): RAR extraction is out of scope. {spec.manual}".strip()
        )
    tmp = os.path.join(root, f".extract-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        safe_extract(archive, tmp)
        for entry in os.listdir(tmp):
            target = os.path.join(root, entry)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)
            os.replace(os.path.join(tmp, entry), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data_dir = os.path.join(root, spec.data_dir)
    if not os.path.isdir(data_dir):
        log.warning("no %s after extraction: the archive has another layout", data_dir)
        data_dir = root
    n_classes, n_images = _count(data_dir)
    if url is None and (n_classes, n_images) != (spec.num_classes, spec.num_images):
        expected = (spec.num_classes, spec.num_images)
        log.warning("%s: found %s classes / images, expected %s", data_dir, (n_classes, n_images), expected)
    done = dict(
        archive=archive, sha256=digest, verified=verify, data_dir=data_dir, url=urls[0], time=time.time()
    )
    with open(marker + ".tmp", "w") as f:
        json.dump(done, f)
    os.replace(marker + ".tmp", marker)
    return DownloadResult(name, data_dir, archive, digest, False, verify)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 error)."""
    p = argparse.ArgumentParser(
        prog="python -m hssal_ray.data.download", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("name", choices=sorted(DATASETS), help="dataset")
    p.add_argument("--root", required=True, help="download and extraction folder (local)")
    p.add_argument("--url", help="mirror URL (http(s):// or file://) overriding the registry's")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification (not recommended)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        r = download_dataset(
            args.name,
            args.root,
            url=args.url,
            sha256=args.sha256,
            verify=not args.no_verify,
            progress=not args.no_progress,
            timeout=args.timeout,
        )
    except HSSALError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = "verified" if r.verified else "NOT verified"
    if r.already:
        print(
            f"{r.name}: already downloaded and extracted (sha256 {r.sha256}, {state}); "
            f"data root: {r.data_dir}"
        )
    else:
        n_classes, n_images = _count(r.data_dir)
        print(
            f"{r.name}: sha256 {r.sha256} ({state}); {n_classes} classes / {n_images} images in {r.data_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
