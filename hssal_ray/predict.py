"""Predict a whole archive with a run's model: ``python -m hssal_ray.predict RUN --data ARCHIVE --out PRED``.

ARCHIVE is anything the loop reads (ImageFolder tree, flat folder, Parquet shards, the shards of
``python -m hssal_ray.data.tile``); every image of it is classified by the run's evaluation model
(the model :mod:`hssal_ray.export` writes: :func:`hssal_ray.run_model.eval_model`). Output:

* ``PRED/predictions.parquet/part-NNNNN.parquet``: ``sample_id``, ``class``, ``class_id``,
  ``confidence`` (the top probability), ``top_classes`` / ``top_probs`` (the ``--top-k`` most
  probable classes); for geo-referenced chips also ``scene``, ``row_off``, ``col_off``,
  ``width``, ``height``, ``crs``, ``transform`` (the chip's), ``bounds_wgs84`` and the WGS84
  footprint ``geometry`` (WKB), with GeoParquet 1.1 metadata: the folder is a GeoParquet dataset
  (``geopandas.read_parquet("PRED/predictions.parquet")``; QGIS opens each part);
* ``PRED/predictions.geojson``: the footprints with class and confidence (geo archives;
  ``--no-geojson`` for very large ones, where the GeoParquet parts are the better format);
* ``PRED/map/<scene>.tif``: the map as a GeoTIFF per scene, a cell per chip (class with a colour table,
  confidence in percent; :mod:`hssal_ray.map_raster`; geo archives, ``--no-geotiff`` to skip), and
  ``PRED/map/legend.csv``;
* ``PRED/predict.json``: run, round, weights digest, class names, archive, counts; ``PRED/bad_samples.csv``
  lists images that could not be decoded.

How: one Ray Data stream over the archive's pending images (the loop's decode stream,
:func:`hssal_ray.data.pipeline.stream_for`) into an actor pool of :class:`Predictor` (the loop's
scorer, :class:`hssal_ray.scoring.Scorer`, holding the exported model: same forward, autocast and
device rules), one GPU per actor when the cluster has GPUs (``--gpu``/``--cpu`` to force), in
input order. The driver keeps one chunk of small result columns at a time and writes it as a part
(atomically) when the stream moves past it, so its memory does not grow with the archive.

Chunks are the archive's shards (or ``--chunk-rows`` images of a folder), in a fixed order; each
part records its chunk and the weights' digest, so a rerun (after a kill, or with more shards)
predicts only chunks without a valid part. ``--local`` runs the same decode and model in this
process without Ray. Progress: a tqdm bar on a terminal, and a line per chunk with the rate and
the ETA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hssal_ray import _io
from hssal_ray._progress import duration
from hssal_ray.errors import HSSALError, StateError
from hssal_ray.map_raster import MAP_DIR, write_map_rasters
from hssal_ray.prediction_files import PART_KEY, PARTS, SUMMARY
from hssal_ray.scoring import Scorer

__all__ = ["Predictor", "predictions_table", "predict", "main"]

log = logging.getLogger(__name__)

_GEO_OUT = ["scene", "row_off", "col_off", "width", "height", "crs", "transform", "bounds_wgs84", "geometry"]


def predictions_table(ids: Sequence[str], probs: np.ndarray, classes: Sequence[str], top_k: int) -> pa.Table:
    """The prediction columns of ``(n, C)`` class probabilities (pure numpy)."""
    k = max(1, min(top_k, probs.shape[1]))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(probs, top, axis=1).astype(np.float32)
    names = np.asarray(classes, dtype=object)
    n = len(ids)
    return pa.table(
        {
            "sample_id": pa.array([str(s) for s in ids], pa.string()),
            "class": pa.array(names[top[:, 0]] if n else [], pa.string()),
            "class_id": pa.array(top[:, 0].astype(np.int32)),
            "confidence": pa.array(top_p[:, 0]),
            "top_classes": pa.FixedSizeListArray.from_arrays(
                pa.array(names[top].reshape(-1), pa.string()), k
            ),
            "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(top_p.reshape(-1)), k),
        }
    )


class Predictor(Scorer):
    """Ray Data actor: the run's evaluation model (:func:`hssal_ray.run_model.eval_model`) in the loop's
    scorer; batches of decoded images -> :func:`predictions_table` rows."""

    def __init__(self, run_dir: str, round_idx: int, top_k: int, use_gpu: bool) -> None:
        from hssal_ray.rounds import amp_dtype
        from hssal_ray.run_model import eval_model, run_model

        rm = run_model(run_dir, round_idx)
        self.cfg, self.classes, self.top_k = rm.cfg, rm.classes, top_k
        self.mode, self.fault_kill, self.batches, self.other = "predict", None, 0, None
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        model = eval_model(rm).to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.cfg.ssl.channels_last else model
        self.amp = amp_dtype(self.cfg.ssl.amp, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        _, probs = self._forward(batch["x_none"])
        return predictions_table(batch["sample_id"], probs, self.classes, self.top_k)


def _weights_digest(rm: Any) -> str:
    data = _io.read_bytes(_io.join(rm.ckpt_dir, rm.weights))
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _chunks(cat: Any, chunk_rows: int) -> list[pa.Table]:
    """The archive's rows in chunks: one per shard, or ``chunk_rows`` files each, in a fixed order."""
    t = cat.table.select(["sample_id", "source", "row", "label"])
    if cat.kind == "shards":
        t = t.sort_by([("source", "ascending"), ("row", "ascending")])
        src = t.column("source").to_numpy(zero_copy_only=False)
        cuts = np.flatnonzero(src[1:] != src[:-1]) + 1
        bounds = [0, *cuts.tolist(), t.num_rows]
    else:
        bounds = [*range(0, t.num_rows, chunk_rows), t.num_rows]
    return [t.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _chunk_tag(chunk: pa.Table, digest: str) -> str:
    ids = chunk.column("sample_id")
    return json.dumps(
        {"rows": chunk.num_rows, "first": ids[0].as_py(), "last": ids[-1].as_py(), "weights": digest}
    )


def _part_path(out: str, i: int) -> str:
    return _io.join(out, PARTS, f"part-{i:05d}.parquet")


def _part_done(path: str, tag: str) -> bool:
    if not _io.exists(path):
        return False
    try:
        fs, inner = _io.resolve_fs(path)
        with fs.open_input_file(inner) as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return meta.get(PART_KEY, b"").decode() == tag


def _write_part(path: str, chunk: pa.Table, preds: pa.Table, tag: str, root: str, geo: bool) -> int:
    """Write one chunk's predictions (joined with its chips' geo columns); returns the rows written."""
    from hssal_ray.data.geo import bbox_of, geoparquet_metadata, read_geo_rows

    meta = {PART_KEY: tag.encode()}
    if geo and preds.num_rows:
        pos = {s: i for i, s in enumerate(chunk.column("sample_id").to_pylist())}
        take = pa.array([pos[s] for s in preds.column("sample_id").to_pylist()], pa.int64())
        g = read_geo_rows(root, chunk.take(take))
        if g is not None:
            for name in _GEO_OUT:
                preds = preds.append_column(name, g.column(name))
            meta.update(geoparquet_metadata(bbox_of(g.column("bounds_wgs84").to_pylist())))
    sink = pa.BufferOutputStream()
    pq.write_table(preds.replace_schema_metadata(meta), sink)
    _io.atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return preds.num_rows


class _Progress:
    """A tqdm bar over images on a terminal, and a line per chunk with the rate and the ETA."""

    def __init__(self, total: int, chunks: int) -> None:
        from tqdm.auto import tqdm

        self.total, self.chunks, self.rows, self.done, self.t0 = total, chunks, 0, 0, time.perf_counter()
        self.bar = tqdm(total=total, unit="img", desc="predict", file=sys.stderr, disable=None)

    def batch(self, rows: int) -> None:
        self.bar.update(rows)

    def chunk(self, rows: int, name: str) -> None:
        self.rows, self.done = self.rows + rows, self.done + 1
        dt = time.perf_counter() - self.t0
        rate = self.rows / dt if dt > 0 else 0.0
        eta = (self.total - self.rows) / rate if rate > 0 else 0.0
        log.info(
            "predict: chunk %d/%d (%s): %d images; %.1f img/s, ETA %s",
            self.done,
            self.chunks,
            name,
            rows,
            rate,
            duration(eta),
        )

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.t0


def _local_batches(
    cfg: Any, cat: Any, chunk: pa.Table, out: str, batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """The decoded batches of a chunk, in this process (the loop's decode step without Ray)."""
    from hssal_ray.data.pipeline import BAD_DIR
    from hssal_ray.run_model import decoder

    decode = decoder(cfg, cat.root, cat.kind, bad_dir=_io.join(out, BAD_DIR))
    for s in range(0, chunk.num_rows, batch):
        part = chunk.slice(s, batch)
        yield decode({c: part.column(c).to_numpy(zero_copy_only=False) for c in part.column_names})


def predict(
    run_dir: str,
    data: str,
    out: str,
    *,
    round_idx: int | None = None,
    top_k: int = 3,
    chunk_rows: int = 10_000,
    batch_size: int | None = None,
    actors: int | None = None,
    gpu: bool | None = None,
    local: bool = False,
    geojson: bool = True,
    geotiff: bool = True,
    resources: Any = None,
) -> dict[str, Any]:
    """Predict every image of ``data`` with the model of ``run_dir`` into ``out`` (module docstring).

    Returns:
        The content of ``predict.json``.

    Raises:
        StateError: ``run_dir`` has no trained round. DataError: ``data`` holds no images, or its
            classes differ from the run's.
    """
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.pipeline import collect_bad_samples
    from hssal_ray.run_model import run_model

    if top_k < 1 or chunk_rows < 1:
        raise ValueError(f"top_k and chunk_rows must be >= 1, got {top_k}, {chunk_rows}")
    rm = run_model(run_dir, round_idx)
    cfg = rm.cfg
    batch = batch_size or cfg.ssl.eval_batch_size
    cat = scan(data, test_fraction=0.0, follow_symlinks=cfg.data.follow_symlinks)
    if cat.class_names and list(cat.class_names) != rm.classes:
        log.warning(
            "the archive's class names differ from the run's: predictions use the run's %s", rm.classes
        )
    digest = _weights_digest(rm)
    chunks = _chunks(cat, chunk_rows)
    tags = [_chunk_tag(c, digest) for c in chunks]
    _io.makedirs(out)
    todo = [
        i
        for i, (c, tag) in enumerate(zip(chunks, tags, strict=True))
        if not _part_done(_part_path(out, i), tag)
    ]
    parts = _io.join(out, PARTS)
    for name in _io.listdir(parts) if _io.exists(parts) else []:  # chunks the archive no longer has
        if name.startswith("part-") and name.endswith(".parquet") and int(name[5:10]) >= len(chunks):
            _io.remove(_io.join(parts, name))
    geo = cat.kind == "shards"
    pending = sum(chunks[i].num_rows for i in todo)
    log.info(
        "predict: %d images in %d chunk(s); %d chunk(s) (%d images) to do, round %d of %s",
        len(cat),
        len(chunks),
        len(todo),
        pending,
        rm.round,
        run_dir,
    )
    progress = _Progress(pending, len(todo))
    written = 0
    if todo and local:
        model = Predictor(run_dir, rm.round, top_k, bool(gpu))
        for i in todo:
            tables = []
            for b in _local_batches(cfg, cat, chunks[i], out, batch):
                tables.append(model(b))
                progress.batch(tables[-1].num_rows)
            preds = pa.concat_tables(tables)
            written += _write_part(_part_path(out, i), chunks[i], preds, tags[i], cat.root, geo)
            progress.chunk(preds.num_rows, chunks[i].column("source")[0].as_py())
    elif todo:
        from hssal_ray._predict_ray import predict_ray

        written = predict_ray(
            rm, cat, chunks, tags, todo, out, progress, top_k, batch, actors, gpu, resources
        )
    seconds = progress.close()
    bad = collect_bad_samples(out)
    summary = {
        "run": str(run_dir),
        "round": rm.round,
        "weights": cfg.ssl.eval_model,
        "weights_digest": digest,
        "classes": list(rm.classes),
        "data": str(data),
        "images": len(cat),
        "chunks": len(chunks),
        "predicted_now": written,
        "bad_samples": bad,
        "seconds": seconds,
        "images_per_s": written / seconds if seconds > 0 and written else None,
        "geo": geo,
    }
    if geo and geojson:
        summary["geojson_features"] = _geojson(out, len(chunks))
    if geo and geotiff:
        try:
            summary["map_rasters"] = write_map_rasters(out, rm.classes, cat.root)
        except StateError as e:  # parts of an older predict: the predictions stand, the rasters wait
            log.warning("no map rasters: %s", e)
    _io.atomic_write_json(_io.join(out, SUMMARY), summary)
    return summary


def _geojson(out: str, n_chunks: int) -> int:
    """``predictions.geojson`` from the parts, streamed part by part."""
    from hssal_ray.data.geo import feature, write_geojson

    def features() -> Iterator[dict[str, Any]]:
        for i in range(n_chunks):
            path = _part_path(out, i)
            if not _io.exists(path):
                continue
            t = _io.read_parquet(path)
            if "geometry" not in t.column_names:
                continue
            cols = {
                c: t.column(c).to_pylist() for c in ("sample_id", "class", "confidence", "scene", "geometry")
            }
            for j in range(t.num_rows):
                props = {c: cols[c][j] for c in ("sample_id", "class", "confidence", "scene")}
                yield feature(cols["geometry"][j], props)

    return write_geojson(_io.join(out, "predictions.geojson"), features())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    from hssal_ray.config import ResourcesConfig

    p = argparse.ArgumentParser(prog="python -m hssal_ray.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory (local path or URI)")
    p.add_argument("--data", required=True, help="archive: image folder or Parquet shards (path or URI)")
    p.add_argument("--out", required=True, help="output folder of the predictions")
    p.add_argument("--round", type=int, default=None, help="round whose model predicts (default: the last)")
    p.add_argument("--top-k", type=int, default=3, help="most probable classes kept per image (default 3)")
    p.add_argument("--chunk-rows", type=int, default=10_000, help="images per part for image folders")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per model batch (ssl.eval_batch_size)"
    )
    p.add_argument(
        "--actors",
        type=int,
        default=None,
        help="model actors (default: each free GPU, else the free CPUs less one)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="one GPU per actor")
    g.add_argument("--cpu", dest="gpu", action="store_false", help="CPU actors even on a GPU cluster")
    p.add_argument("--local", action="store_true", help="predict in this process (no Ray)")
    p.add_argument("--no-geojson", action="store_true", help="no predictions.geojson (GeoParquet parts only)")
    p.add_argument("--no-geotiff", action="store_true", help="no map/<scene>.tif rasters (geo archives)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: the run's resources)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray runtime")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    resources = None
    if args.address or args.num_cpus:
        resources = ResourcesConfig(address=args.address, num_cpus=args.num_cpus)
    try:
        s = predict(
            args.run,
            args.data,
            args.out,
            round_idx=args.round,
            top_k=args.top_k,
            chunk_rows=args.chunk_rows,
            batch_size=args.batch_size,
            actors=args.actors,
            gpu=args.gpu,
            local=args.local,
            geojson=not args.no_geojson,
            geotiff=not args.no_geotiff,
            resources=resources,
        )
    except (HSSALError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = f", {s['images_per_s']:.1f} img/s" if s["images_per_s"] else ""
    print(
        f"predicted {s['predicted_now']} of {s['images']} images (round {s['round']}{rate}) into {args.out}"
        + (f"; {s['bad_samples']} unreadable (bad_samples.csv)" if s["bad_samples"] else "")
        + (f"; {s['geojson_features']} footprints in predictions.geojson" if "geojson_features" in s else "")
        + (
            f"; map rasters of {s['map_rasters']['scenes']} scene(s) in {MAP_DIR}/"
            if "map_rasters" in s
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: Ray pickles classes and functions of
    # __main__ by value (with their globals), those of an importable module by reference.
    from hssal_ray.predict import main as _main

    sys.exit(_main())
