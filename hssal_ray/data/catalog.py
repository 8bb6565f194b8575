"""Scan a dataset root into a manifest (a pyarrow Table) with stable ids and a seeded split.

Three sources (``layout="auto"`` detects which):

* ``imagefolder``: one folder per class (UCM / AID / NWPU-RESISC45 layouts); nested folders under a
  class are allowed; images directly under the root are ignored with a warning.
* ``flat``: images anywhere under the root, no labels (``label = -1``: the unlabeled pool).
* ``shards``: Parquet files written by ``python -m hssal_ray.data.shard`` (columns ``sample_id``,
  ``image`` (encoded bytes), ``label``, ``class_name``; class names in the schema metadata key
  ``hssal_classes``).

Scanning only lists files (and reads the small columns of shards): it never decodes an image.
Image extensions (case-insensitive): ``.jpg .jpeg .png .tif .tiff``; names starting with ``.`` (and
anything inside such folders) are ignored.

What a local scan refuses (:attr:`Catalog.refused`, one ``(path, reason)`` each, and one warning
line with the counts): a symbolic link whose resolved path is outside the resolved root (a file or
a folder; ``follow_symlinks=True`` follows them, links inside the root are always followed), a
dangling or looping link, anything that is not a regular file or a folder (a FIFO is never
opened: reading it could block forever), and in an ImageFolder tree a class folder with no usable
image. Refused folders end with ``/``.

``sample_id`` is the POSIX path of the image relative to the root (``agricultural/agricultural00.tif``),
so it is stable across re-scans and survives sharding. Split: within each class, samples are ranked by
``blake2b(f"{seed}:{sample_id}")`` and the first ``round_half_up(test_fraction * n_c)`` go to ``test``;
unlabeled samples are all ``train`` (they are pool). Class index = position in the sorted class names.

:func:`load_bytes` (:mod:`hssal_ray.data.fetch`) fetches the encoded bytes of a batch of manifest
rows (files, or shard rows grouped by shard, reading only the row groups needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from hssal_ray import _io
from hssal_ray.data._shard_index import CLASSES_KEY, _scan_shards
from hssal_ray.data.fetch import file_kind, inside
from hssal_ray.errors import DataError

log = logging.getLogger(__name__)

_HASH_CHUNK = 65_536  # ids hashed per chunk by the split
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
_CATALOG_KEY = "hssal_catalog"
Layout = Literal["auto", "imagefolder", "flat", "shards"]
MANIFEST_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("row", pa.int32()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("split", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True)
class Catalog:
    """A scanned dataset: the manifest plus where it came from.

    Args:
        root: The dataset root as given (local path or URI).
        table: Manifest with :data:`MANIFEST_SCHEMA` columns, sorted by ``sample_id``.
        class_names: Sorted class names; ``label`` indexes into them (``-1`` = unknown).
        kind: ``files`` (image files under ``root``) or ``shards`` (Parquet shards).
        refused: ``(path relative to root, reason)`` of what the scan did not use (see the module
            docstring); empty for a catalog read back with :meth:`load`.
    """

    root: str
    table: pa.Table
    class_names: tuple[str, ...]
    kind: Literal["files", "shards"]
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return self.table.num_rows

    def split_table(self, split: str) -> pa.Table:
        """Manifest rows of one split (``train``, ``test`` or ``val``)."""
        if split not in ("train", "test", "val"):
            raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")
        return _filter_rows(self.table, pc.equal(self.table["split"], split))

    def split_ids(self, split: str) -> list[str]:
        """Sample ids of one split (``train`` or ``test``), sorted."""
        return self.split_table(split)["sample_id"].to_pylist()

    def summary(self) -> str:
        """One-line human summary (counts, classes, split)."""
        split = self.table["split"]
        labels = self.table["label"].to_numpy()
        n_train, n_test, n_val = (
            int(pc.sum(pc.equal(split, v)).as_py() or 0) for v in ("train", "test", "val")
        )
        names, counts = (
            ("train/test/val", f"{n_train}/{n_test}/{n_val}")
            if n_val
            else ("train/test", f"{n_train}/{n_test}")
        )
        return (
            f"{self.table.num_rows} samples ({int((labels >= 0).sum())} labeled, {int((labels < 0).sum())} "
            f"unlabeled), {self.num_classes} classes, split {names} {counts}, "
            f"kind={self.kind}, root={self.root}"
        )

    def save(self, path: str) -> None:
        """Write the manifest atomically as Parquet (class names, root and kind in its metadata)."""
        meta = {
            CLASSES_KEY.encode(): json.dumps(list(self.class_names)).encode(),
            _CATALOG_KEY.encode(): json.dumps({"root": self.root, "kind": self.kind, "version": 1}).encode(),
        }
        _io.atomic_write_parquet(path, self.table.replace_schema_metadata(meta))

    @classmethod
    def load(cls, path: str) -> Catalog:
        """Read a manifest written by :meth:`save`.

        Raises:
            DataError: The file is missing, unreadable or not a catalog.
        """
        try:
            table = _io.read_parquet(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read catalog {path}: {e}") from e
        meta = table.schema.metadata or {}
        if _CATALOG_KEY.encode() not in meta or CLASSES_KEY.encode() not in meta:
            raise DataError(f"{path} is not a catalog written by Catalog.save (no hssal metadata)")
        info = json.loads(meta[_CATALOG_KEY.encode()])
        classes = tuple(json.loads(meta[CLASSES_KEY.encode()]))
        table = table.replace_schema_metadata(None).select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
        return cls(root=info["root"], table=table, class_names=classes, kind=info["kind"])


def _filter_rows(table: pa.Table, mask: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``table.filter(mask)`` (nulls drop), without a copy when the mask keeps every row (e.g. the
    train split of an unlabeled archive: a copy would double the manifest held by the driver)."""
    kept = int(pc.sum(mask).as_py() or 0)
    if kept == table.num_rows and mask.null_count == 0:
        return table
    return table.filter(mask)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _list_files(
    root: str, follow_symlinks: bool = False
) -> tuple[pafs.FileSystem, str, list[str], list[str], list[tuple[str, str]]]:
    """Non-hidden files under ``root``: ``(fs, base, files, top-level folders, refused)``, the paths
    sorted and relative to the root, in POSIX form."""
    fs, base = _io.resolve_fs(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data root does not exist: {root}")
    if info.type != pafs.FileType.Directory:
        raise DataError(f"data root is not a directory: {root}")
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            files, top, refused = _walk_local(base, follow_symlinks)
        except OSError as e:
            raise DataError(f"cannot list data root {root}: {e}") from e
        return fs, base, files, top, refused
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as e:
        raise DataError(f"cannot list data root {root}: {e}") from e
    prefix = base.rstrip("/") + "/"
    rels, top = [], []
    for i in infos:
        if not i.path.startswith(prefix) or _is_hidden(i.path[len(prefix) :]):
            continue
        rel = i.path[len(prefix) :]
        if i.type == pafs.FileType.File:
            rels.append(rel)
        elif i.type == pafs.FileType.Directory and "/" not in rel:
            top.append(rel)
    return fs, base, sorted(rels), sorted(top), []


def _walk_local(base: str, follow_symlinks: bool) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Walk a local root (see the module docstring for what is refused).

    File types come from the directory entries (no ``stat`` per regular file); links are resolved
    one by one. A folder already on the path from the root (a link loop) is not entered twice.
    """
    real_root = os.path.realpath(base)
    files: list[str] = []
    top: list[str] = []
    refused: list[tuple[str, str]] = []
    st_root = os.stat(base)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (base, "", frozenset({(st_root.st_dev, st_root.st_ino)}))
    ]
    while stack:
        path, prefix, above = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_symlink():
                try:
                    st = os.stat(entry.path)
                except FileNotFoundError:
                    refused.append((rel, f"dangling symlink: {os.readlink(entry.path)}"))
                    continue
                except OSError as e:
                    refused.append((rel, f"unresolvable symlink: {e.strerror or e}"))
                    continue
                is_dir, is_file = stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
                if not follow_symlinks:
                    real = os.path.realpath(entry.path)
                    if not inside(real, real_root):
                        refused.append((rel + "/" if is_dir else rel, f"symlink outside data root: {real}"))
                        continue
            else:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            if is_file:
                files.append(rel)
            elif is_dir:
                st = entry.stat()
                key = (st.st_dev, st.st_ino)
                if key in above:
                    refused.append((rel + "/", "symlink loop: a folder above it"))
                    continue
                stack.append((entry.path, rel + "/", above | {key}))
                if not prefix:
                    top.append(rel)
            else:
                kind = file_kind(entry.stat(follow_symlinks=True).st_mode)
                refused.append((rel, f"not a regular file ({kind})"))
    return sorted(files), sorted(top), sorted(refused)


def _log_refused(root: str, refused: Sequence[tuple[str, str]], follow_symlinks: bool) -> None:
    """One warning line: how many entries were not used, by reason, with an example."""
    if not refused:
        return
    counts = Counter(reason.split(":", 1)[0].split(" (", 1)[0] for _, reason in refused)
    what = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    hint = (
        "; data.follow_symlinks=true follows links out of the root"
        if not follow_symlinks and counts.get("symlink outside data root")
        else ""
    )
    log.warning(
        "data root %s: %d entries not used (%s), e.g. %s (%s)%s",
        root,
        len(refused),
        what,
        refused[0][0],
        refused[0][1],
        hint,
    )


def _ext(rel: str) -> str:
    return posixpath.splitext(rel)[1].lower()


def _split_keys(ids: Sequence[str] | pa.Array | pa.ChunkedArray, rows: np.ndarray) -> Iterator[str]:
    """The ids at ``rows`` (ascending) as Python strings, a chunk at a time (bounded memory)."""
    if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(ids, pa.string())
    for s in range(0, len(rows), _HASH_CHUNK):
        yield from ids.take(pa.array(rows[s : s + _HASH_CHUNK])).to_pylist()


def _test_mask(
    ids: Sequence[str] | pa.Array | pa.ChunkedArray, labels: np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Seeded, stratified, stable test selection (see the module docstring).

    Only labeled rows are hashed (unlabeled rows are always ``train``), ``_HASH_CHUNK`` ids at a
    time: no Python string per manifest row is held at once.
    """
    is_test = np.zeros(len(ids), dtype=bool)
    labeled = np.flatnonzero(labels >= 0)
    if labeled.size == 0 or test_fraction <= 0:
        return is_test
    keys = np.zeros(len(ids), dtype=np.uint64)
    keys[labeled] = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest(), "big")
            for sid in _split_keys(ids, labeled)
        ),
        dtype=np.uint64,
        count=labeled.size,
    )
    for c in np.unique(labels[labeled]):
        idx = np.flatnonzero(labels == c)  # ``ids`` are sorted, so ties (never seen) break by id
        k = int(math.floor(test_fraction * idx.size + 0.5))
        is_test[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    return is_test


def _scan_files(rels: list[str], layout: str, root: str) -> tuple[list[str], list[str], list[str | None]]:
    """Image files -> (sample_ids, class_names, per-sample class name or None)."""
    images = [r for r in rels if _ext(r) in IMAGE_EXTENSIONS]
    if layout == "flat":
        return images, [], [None] * len(images)
    loose = [r for r in images if "/" not in r]
    if loose:
        log.warning(
            "ignoring %d image(s) directly under %s (ImageFolder layout), e.g. %s", len(loose), root, loose[0]
        )
    labeled = [r for r in images if "/" in r]
    if not labeled:
        raise DataError(f"no images in class folders under data root {root} (ImageFolder layout)")
    per = [r.split("/", 1)[0] for r in labeled]
    classes = sorted(set(per))
    if len(classes) == 1:
        log.warning("only one class folder %r under %s: is the root one level too high?", classes[0], root)
    return labeled, classes, list(per)


def _check_unique(table: pa.Table, root: str) -> None:
    counts = pc.value_counts(table["sample_id"])
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup) == 0:
        return
    first = dup[0]["values"].as_py()
    rows = table.filter(pc.equal(table["sample_id"], first))
    where = ", ".join(sorted(set(rows["source"].to_pylist())))
    raise DataError(
        f"duplicate sample_id {first!r} under data root {root} (in {where}); "
        f"{len(dup)} id(s) are duplicated in total"
    )


def _strictly_increasing(ids: pa.ChunkedArray | pa.Array) -> bool:
    """Whether ``ids`` are sorted and unique (the usual case: files are listed sorted, shards are
    written in id order), checked without the hash table of :func:`_check_unique` or a sort."""
    n = len(ids)
    if n < 2:
        return True
    if ids.null_count:
        return False
    return bool(pc.all(pc.less(ids.slice(0, n - 1), ids.slice(1))).as_py())


def _manifest_rows(
    fs: pafs.FileSystem, base: str, rels: list[str], top: list[str], layout: str, root: str
) -> tuple[pa.Table, list[str], Literal["files", "shards"], list[str]]:
    """The manifest rows (no split yet) of the listed files: ``(table, classes, kind, empty class
    folders)``."""
    empty: list[str] = []
    has_images = any(_ext(r) in IMAGE_EXTENSIONS for r in rels)
    shards = [r for r in rels if _ext(r) == ".parquet"]
    if layout == "auto":
        if has_images and shards:
            raise DataError(f"data root {root} holds both image files and Parquet shards: pass layout=...")
        if shards:
            layout = "shards"
        elif has_images:
            layout = "imagefolder" if any("/" in r and _ext(r) in IMAGE_EXTENSIONS for r in rels) else "flat"
        else:
            raise DataError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or Parquet shards under data root {root}"
            )
    if layout == "shards":
        if not shards:
            raise DataError(f"no Parquet shards (*.parquet) under data root {root}")
        table, classes = _scan_shards(fs, base, shards, root)
        kind: Literal["files", "shards"] = "shards"
    else:
        if not has_images:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under data root {root}")
        ids, classes, per = _scan_files(rels, layout, root)
        if layout == "imagefolder":
            empty = sorted(set(top) - set(classes))
        index = {c: i for i, c in enumerate(classes)}
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "source": pa.array(ids, pa.string()),
                "row": pa.array(np.full(len(ids), -1, dtype=np.int32)),
                "label": pa.array([index[c] if c is not None else -1 for c in per], pa.int32()),
                "class_name": pa.array(per, pa.string()),
            }
        )
        kind = "files"
    return table, list(classes), kind, empty


def scan(
    root: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    layout: Layout = "auto",
    val_fraction: float = 0.0,
    follow_symlinks: bool = False,
) -> Catalog:
    """Scan a dataset root (local path or pyarrow URI) into a :class:`Catalog`.

    Args:
        root: ImageFolder tree, flat folder of images, or folder of Parquet shards.
        test_fraction: Fraction of each class put in the ``test`` split (``0 <= f < 1``).
        seed: Split seed.
        layout: ``auto``, ``imagefolder``, ``flat`` or ``shards``.
        val_fraction: Fraction of each class of the *training* rows moved to a ``val`` split (for
            tuning a recipe without reading the test split); 0 = none.
        follow_symlinks: Use links whose resolved path is outside the root too (default: refuse
            them; links inside the root are followed either way).

    Returns:
        The catalog; its table has one row per sample, sorted by ``sample_id``; what was not used
        is in :attr:`Catalog.refused` (and one warning line).

    Raises:
        DataError: Missing root, root with no images, duplicate ids, unreadable shard (the message
            names the path).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if layout not in ("auto", "imagefolder", "flat", "shards"):
        raise ValueError(f"layout must be auto, imagefolder, flat or shards, got {layout!r}")
    fs, base, rels, top, refused = _list_files(root, follow_symlinks)
    try:
        table, classes, kind, empty = _manifest_rows(fs, base, rels, top, layout, root)
    except DataError as e:
        if not refused:
            raise
        path, why = refused[0]
        raise DataError(f"{e} ({len(refused)} entries were not used, e.g. {path}: {why})") from None
    refused = sorted([*refused, *((d + "/", "empty class folder: no usable image") for d in empty)])
    if not _strictly_increasing(table["sample_id"]):  # else: sorted and unique already (no copy)
        _check_unique(table, root)
        table = table.sort_by("sample_id")
    labels = table["label"].to_numpy()
    mask = _test_mask(table["sample_id"], labels, test_fraction, seed)
    split = pc.if_else(pa.array(mask), pa.scalar("test", pa.string()), pa.scalar("train", pa.string()))
    if val_fraction > 0:
        val = _test_mask(table["sample_id"], np.where(mask, -1, labels), val_fraction, seed + 0x5A1)
        split = pc.if_else(pa.array(val), pa.scalar("val", pa.string()), split)
    table = table.append_column("split", split)
    _log_refused(str(root), refused, follow_symlinks)
    cat = Catalog(
        root=str(root),
        table=table.cast(MANIFEST_SCHEMA),
        class_names=tuple(classes),
        kind=kind,
        refused=tuple(refused),
    )
    log.info("scanned %s", cat.summary())
    return cat
