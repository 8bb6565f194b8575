"""Ray Data pipelines: stream, decode and augment RS imagery in workers.

The driver only ever holds *manifest rows* (ids, sources, labels: ~100 bytes a sample);
image bytes are read, decoded and augmented inside Ray Data tasks (``map_batches``) and
consumed by Ray Train workers (``get_dataset_shard``) or the scoring actor pool.

Determinism: a training stream is a fixed, seeded *schedule* of manifest rows (each row
carries its own augmentation seed), read in order, so a re-run of a round sees the same
batches with the same augmentations.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray import _csv, _io
from hssal_ray.data.decode import DEFAULT_MAX_PIXELS, decode_batch
from hssal_ray.data.fetch import load_bytes
from hssal_ray.data.transforms import augment_batch, default_mean_std
from hssal_ray.errors import DataError

__all__ = [
    "DecodeAugment",
    "make_schedule",
    "manifest_dataset",
    "collect_bad_samples",
    "write_bad_part",
    "BAD_DIR",
    "stream",
    "stream_for",
    "decode_settings",
    "route",
    "in_order",
]

log = logging.getLogger(__name__)

BAD_DIR = "_bad_parts"
_MANIFEST_COLS = ["sample_id", "source", "row", "label"]


class DecodeAugment:
    """Ray Data batch UDF: read encoded bytes, decode, augment; bad samples are dropped and listed.

    Input batch columns: ``sample_id``, ``source``, ``row``, ``label`` and optionally
    ``aug_seed`` (int64; defaults to 0). Output columns: ``sample_id``, ``label``,
    ``aug_seed`` and one float32 ``(B, C, S, S)`` array ``x_<view>`` per requested view
    (``none`` = resize + normalise, ``weak``, ``strong``), or ``image`` (uint8) when
    ``views`` is empty.

    Args:
        root: Dataset root (local path or URI).
        kind: ``files`` or ``shards`` (the catalog's kind).
        bands: Image bands.
        size: Decoded side length.
        views: Views to produce.
        mean: Normalisation mean per band (``None`` = default for ``bands``).
        std: Normalisation std per band.
        bad_dir: Where to write the list of samples that failed to decode (one CSV part per
            batch that had any); ``None`` only logs them.
        max_pixels: Largest ``H x W`` decoded (``data.max_image_pixels``); larger images are
            refused from their header and listed as bad (``too large``).
        follow_symlinks: Read local files that resolve outside the root (``data.follow_symlinks``).
        select: Bands kept from each image, 1-based (``data.band_select``); ``None`` = all.
        value_range: Fixed ``(low, high)`` scaling of non-8-bit images (``data.value_range``).
    """

    def __init__(
        self,
        root: str,
        kind: str,
        bands: int,
        size: int,
        views: Sequence[str] = ("none",),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        bad_dir: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        follow_symlinks: bool = False,
        select: Sequence[int] | None = None,
        value_range: Sequence[float] | None = None,
    ) -> None:
        self.select = tuple(select) if select is not None else None
        self.value_range = tuple(value_range) if value_range is not None else None
        self.root = root
        self.kind = kind
        self.bands = bands
        self.size = size
        self.views = tuple(views)
        dm, ds = default_mean_std(bands)
        self.mean = tuple(mean) if mean is not None else tuple(dm)
        self.std = tuple(std) if std is not None else tuple(ds)
        self.bad_dir = bad_dir
        self.max_pixels = max_pixels
        self.follow_symlinks = follow_symlinks

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _single_thread()
        ids = [str(s) for s in batch["sample_id"]]
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "source": pa.array([str(s) for s in batch["source"]], pa.string()),
                "row": pa.array(np.asarray(batch["row"], dtype=np.int32)),
                "label": pa.array(np.asarray(batch["label"], dtype=np.int32)),
            }
        )
        why: dict[int, str] = {}
        raw = load_bytes(self.root, self.kind, table, follow_symlinks=self.follow_symlinks, unreadable=why)
        images, good, bad = decode_batch(
            raw,
            ids,
            bands=self.bands,
            size=self.size,
            max_pixels=self.max_pixels,
            unreadable=why,
            select=self.select,
            value_range=self.value_range,
        )
        if bad:
            self._record_bad(bad)
        good = np.asarray(good, dtype=np.int64)
        seeds = np.asarray(batch.get("aug_seed", np.zeros(len(ids), np.int64)), dtype=np.int64)[good]
        out: dict[str, np.ndarray] = {
            "sample_id": np.asarray(ids, dtype=object)[good],
            "label": np.asarray(batch["label"], dtype=np.int64)[good],
            "aug_seed": seeds,
        }
        if not self.views:
            out["image"] = images
        for i, view in enumerate(self.views):
            # Different views of the same sample must not share random draws.
            out[f"x_{view}"] = augment_batch(
                images,
                seeds * 4 + i,
                kind=view.split("_", 1)[0],  # "weak_1": a second weak view (its own draws)
                crop_size=self.size,
                mean=self.mean,
                std=self.std,
            )
        return out

    def _record_bad(self, bad: list[tuple[str, str]]) -> None:
        for sid, reason in bad[:5]:
            log.warning("skipping unreadable sample %s: %s", sid, reason)
        if self.bad_dir is not None:
            write_bad_part(self.bad_dir, bad)


def write_bad_part(bad_dir: str, bad: Sequence[tuple[str, str]]) -> None:
    """Write ``(sample_id, reason)`` rows as one new part under ``bad_dir`` (see
    :func:`collect_bad_samples`); parts are never rewritten, so concurrent writers never clash."""
    buf = io.StringIO()
    w = csv.writer(buf)
    for sid, reason in bad:
        w.writerow([sid, reason])
    _io.atomic_write_text(_io.join(bad_dir, _io.unique_name("bad", ".csv")), buf.getvalue())


def _single_thread() -> None:
    """One intra-op thread per data worker: Ray runs one task per CPU already."""
    try:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _decode_augment(batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
    """Task-based form of :class:`DecodeAugment` (no actor start-up per dataset)."""
    return DecodeAugment(**kwargs)(batch)


def collect_bad_samples(run_dir: str) -> int:
    """Merge the per-batch bad-sample parts of a run into ``bad_samples.csv``.

    Returns:
        The number of distinct bad samples listed.
    """
    part_dir = _io.join(run_dir, BAD_DIR)
    out_path = _io.join(run_dir, "bad_samples.csv")
    rows: dict[str, str] = {}
    if _io.exists(out_path):
        for r in _csv.read_dicts(_io.read_text(out_path)):
            rows[r["sample_id"]] = r["reason"]
    parts = [p for p in _io.listdir(part_dir) if p.endswith(".csv")]
    for name in parts:
        for r in csv.reader(io.StringIO(_io.read_text(_io.join(part_dir, name)))):
            if len(r) == 2:
                rows.setdefault(r[0], r[1])
    if parts or rows:
        buf = io.StringIO()
        w = _csv.writer(buf)
        w.writerow(["sample_id", "reason"])
        for sid in sorted(rows):
            w.writerow([sid, rows[sid]])
        _io.atomic_write_text(out_path, buf.getvalue())
        for name in parts:
            _io.remove(_io.join(part_dir, name))
    return len(rows)


def make_schedule(table: pa.Table, length: int, seed: int) -> pa.Table:
    """A seeded training stream of exactly ``length`` manifest rows.

    Concatenates independent seeded permutations of ``table`` (epochs) and truncates, and
    gives every position its own augmentation seed, so the stream (and its augmentations)
    is a pure function of ``(table, length, seed)``.

    Args:
        table: Manifest rows (``sample_id, source, row, label``), in a canonical order.
        length: Rows in the stream.
        seed: Stream seed.

    Returns:
        The stream with an extra ``aug_seed`` (int64) column.
    """
    n = table.num_rows
    if n == 0:
        raise ValueError("cannot build a training stream from an empty set")
    rng = np.random.default_rng(seed)
    epochs = -(-length // n)
    idx = np.concatenate([rng.permutation(n) for _ in range(epochs)])[:length]
    out = table.select(_MANIFEST_COLS).take(pa.array(idx))
    aug = rng.integers(0, 2**62, size=length, dtype=np.int64)
    return out.append_column("aug_seed", pa.array(aug))


def manifest_dataset(table: pa.Table, rows_per_block: int = 256) -> Any:
    """A Ray Dataset of manifest rows, in order, split into blocks for parallel decoding."""
    import ray.data

    n = table.num_rows
    if n == 0:
        raise ValueError("empty manifest selection")
    chunks = [table.slice(i, rows_per_block) for i in range(0, n, rows_per_block)]
    return ray.data.from_arrow(chunks)


def stream(
    table: pa.Table,
    *,
    root: str,
    kind: str,
    bands: int,
    size: int,
    views: Sequence[str],
    batch_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bad_dir: str | None = None,
    drop_ids: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    follow_symlinks: bool = False,
    select: Sequence[int] | None = None,
    value_range: Sequence[float] | None = None,
    rows_per_block: int | None = None,
) -> Any:
    """Manifest rows -> Ray Dataset of decoded, augmented arrays (lazy, streaming).

    Args:
        table: Manifest rows to stream, in order.
        root: Dataset root.
        kind: Catalog kind.
        bands: Image bands.
        size: Decoded/cropped side.
        views: Views to produce (see :class:`DecodeAugment`).
        batch_size: Rows per decode task batch.
        mean: Normalisation mean.
        std: Normalisation std.
        bad_dir: Directory for bad-sample parts.
        drop_ids: Drop the string ``sample_id`` column (``iter_torch_batches`` cannot carry it).
        max_pixels: Pixel limit of the decoder (``data.max_image_pixels``).
        follow_symlinks: Read files that resolve outside the root (``data.follow_symlinks``).
        select: Bands kept, 1-based (``data.band_select``).
        value_range: Fixed scaling of non-8-bit images (``data.value_range``).
        rows_per_block: Manifest rows per block, the unit a task (or a fused actor) takes; None = 4
            decode batches.
    """
    # Only the columns the decode step reads go into the object store (not e.g. class_name, split).
    keep = [c for c in (*_MANIFEST_COLS, "aug_seed") if c in table.column_names]
    if len(keep) < table.num_columns:
        table = table.select(keep)
    ds = manifest_dataset(table, rows_per_block=rows_per_block or default_rows_per_block(batch_size))
    ds = ds.map_batches(
        _decode_augment,
        fn_kwargs=dict(
            root=root,
            kind=kind,
            bands=bands,
            size=size,
            views=tuple(views),
            mean=mean,
            std=std,
            bad_dir=bad_dir,
            max_pixels=max_pixels,
            follow_symlinks=follow_symlinks,
            select=select,
            value_range=value_range,
        ),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    if drop_ids:
        ds = ds.drop_columns(["sample_id"])
    return ds


def decode_settings(cfg: Any, *, root: str, kind: str, bad_dir: str | None) -> dict[str, Any]:
    """The run's decode settings, as :class:`DecodeAugment` and :func:`stream` take them: bands,
    size, the weights' normalisation, pixel limit, links, band selection and value range."""
    from hssal_ray.packaged_weights import normalisation

    mean, std = normalisation(cfg)
    return dict(
        root=root,
        kind=kind,
        bands=cfg.data.bands,
        size=cfg.data.image_size,
        mean=mean,
        std=std,
        bad_dir=bad_dir,
        max_pixels=cfg.data.max_image_pixels,
        follow_symlinks=cfg.data.follow_symlinks,
        select=cfg.data.band_select,
        value_range=cfg.data.value_range,
    )


def default_rows_per_block(batch_size: int) -> int:
    """Manifest rows per block of :func:`stream` when not set: 4 decode batches."""
    return max(batch_size, 1) * 4


def stream_blocks(rows: int, batch_size: int, rows_per_block: int | None = None) -> int:
    """Blocks of a :func:`stream` of ``rows`` rows (what an actor pool over it can keep busy)."""
    return -(-rows // (rows_per_block or default_rows_per_block(batch_size)))


def stream_for(
    cfg: Any,
    table: pa.Table,
    *,
    root: str,
    kind: str,
    views: Sequence[str],
    run_dir: str,
    rows_per_block: int | None = None,
) -> Any:
    """:func:`stream` with the run's settings (:func:`decode_settings`) and decode batch size."""
    return stream(
        table,
        views=views,
        batch_size=cfg.data.decode_batch_size,
        rows_per_block=rows_per_block,
        **decode_settings(cfg, root=root, kind=kind, bad_dir=_io.join(run_dir, BAD_DIR)),
    )


@contextlib.contextmanager
def in_order() -> Iterator[None]:
    """Ray Data streams created and run inside return their results in input order (``preserve_order``);
    the setting is restored on exit, so nothing else in the process inherits it (:func:`route`'s callers)."""
    from ray.data import DataContext

    opts = DataContext.get_current().execution_options
    was = opts.preserve_order
    opts.preserve_order = True
    try:
        yield
    finally:
        opts.preserve_order = was


def route(
    batches: Iterable[pa.Table], chunk_ids: Iterable[Any], seen: Callable[[int], None] | None = None
) -> Iterator[tuple[int, pa.Table | None]]:
    """Group an ordered stream of result batches into the chunks they belong to.

    Args:
        batches: Result tables with a ``sample_id`` column, in the order of the chunks' rows
            (rows may be missing: images that failed to decode).
        chunk_ids: Each chunk's ``sample_id`` values, in order (read one chunk at a time).
        seen: Called with the row count of each batch (progress).

    Yields:
        ``(k, table)`` for every chunk ``k`` in order, as soon as the stream has moved past it;
        ``table`` is None when none of its rows came back. Only one chunk's ids and results are
        held at a time.

    Raises:
        DataError: A row of no remaining chunk (the stream was not in chunk order).
    """
    chunk_iter = iter(chunk_ids)
    n = -1
    current: set[str] = set()
    buf: list[pa.Table] = []

    def advance() -> bool:
        nonlocal n, current
        nxt = next(chunk_iter, None)
        if nxt is None:
            return False
        n, current = n + 1, set(nxt.to_pylist() if hasattr(nxt, "to_pylist") else nxt)
        return True

    if not advance():
        return
    for b in batches:
        if seen is not None:
            seen(b.num_rows)
        ids = b.column("sample_id").to_pylist()
        s = 0
        while s < len(ids):
            e = s
            while e < len(ids) and ids[e] in current:
                e += 1
            if e > s:
                buf.append(b.slice(s, e - s))
            if e < len(ids):  # the stream moved on: this chunk is complete
                yield n, pa.concat_tables(buf) if buf else None
                buf = []
                if not advance():
                    raise DataError(f"a result for {ids[e]!r}, which is in no pending chunk")
            s = e
    yield n, pa.concat_tables(buf) if buf else None
    while advance():
        yield n, None
