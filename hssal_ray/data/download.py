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
import sys
import time
import urllib.parse
from collections.abc import Sequence
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from hssal_ray.data.datasets import DATASETS, DatasetSpec
from hssal_ray.data.extract import _ARCHIVE_EXTS, _CHUNK, _archive_kind, safe_extract
from hssal_ray.errors import DownloadError, HSSALError

__all__ = ["DatasetSpec", "DATASETS", "DownloadResult", "download_dataset", "fetch", "safe_extract", "main"]

log = logging.getLogger(__name__)


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
