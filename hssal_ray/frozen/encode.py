"""Encoding the embedding store (:mod:`hssal_ray.frozen.store`): Ray Data batch inference, chunk by chunk.

:func:`ensure_store` keys the store (:func:`store_key`: images, backbone, weights, size,
normalisation, views), finds it (:func:`store_path`), checks the parts already written (row count
and ids; a damaged part is encoded again) and encodes what is missing: decode + augment tasks feed
an actor pool holding the backbone (:class:`Encoder`; ``resources.encode_actors``, by default one
per GPU or one per free CPU less one: :func:`hssal_ray.scoring.auto_pool_size`), each chunk written
as one part atomically, with a progress line per chunk (:class:`EncodeProgress`). Then it opens the
store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hssal_ray import _io
from hssal_ray._progress import duration
from hssal_ray.errors import DataError
from hssal_ray.frozen import store as _store
from hssal_ray.frozen.store import STORE_VERSION, EmbeddingStore, _part, open_store, view_names

__all__ = ["store_key", "store_path", "ensure_store", "Encoder", "EncodeProgress"]

log = logging.getLogger(__name__)


def store_key(cfg: Any, ids: pa.ChunkedArray | pa.Array, root: str) -> str:
    """Hash of what determines the embeddings: images (root + manifest ids), backbone, weights, input, and
    bfloat16 autocast where the encode runs under it."""
    from hssal_ray.packaged_weights import normalisation
    from hssal_ray.rounds import amp_dtype

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
        views=cfg.frozen.embed_views,
    )
    # How pixels become the model's input, only when set: stores keyed before these existed keep their key.
    for name in ("band_select", "value_range"):
        value = getattr(cfg.data, name, None)
        if value is not None:
            spec[name] = list(value)
    # bfloat16 autocast moves the features (Lite0 on UCM: 57% of the fp16 values, lowest row cosine 0.94;
    # benchmarks/encode_throughput.py): its own store. channels_last is not keyed: fp32 rounding only.
    if amp_dtype(cfg.ssl.amp, "cuda" if cfg.resources.use_gpu else "cpu") is not None:
        spec["encode_dtype"] = "bfloat16"
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
    views = view_names(cfg.frozen.embed_views)
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
        todo = [i for i, (s, e) in enumerate(_store._chunks(n)) if not _part_ok(path, i, ids_all[s:e], views)]
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
            "chunks": len(_store._chunks(n)),
            "complete": True,
        }
        _io.atomic_write_json(meta_path, meta)
    return open_store(path, views=views, rows=n)


class Encoder:
    """Ray Data actor: the frozen backbone in memory; decoded views -> pooled fp16 features."""

    def __init__(
        self, experiment: dict[str, Any], views: tuple[str, ...], fault_kill: str | None = None
    ) -> None:
        import torch

        from hssal_ray.config import config_from_dict
        from hssal_ray.models import model_from_config
        from hssal_ray.rounds import amp_dtype
        from hssal_ray.ssl.steps import prepare_model

        cfg = config_from_dict(experiment)
        self.views = views
        self.fault_kill = fault_kill  # testing hook: hssal_ray.faults.kill_actor
        self.batches = 0
        self.device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        torch.manual_seed(0)  # a backbone without pretrained weights is the same in every actor and run
        backbone = model_from_config(cfg, num_classes=1).backbone.eval()
        self.channels_last = cfg.ssl.channels_last
        self.backbone = prepare_model(backbone, self.device, channels_last=self.channels_last)
        self.amp = amp_dtype(cfg.ssl.amp, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        from hssal_ray import faults
        from hssal_ray.ssl._device import _inputs

        self.batches += 1
        faults.kill_actor(self.batches, self.fault_kill, "encode")
        cols: dict[str, Any] = {"sample_id": pa.array([str(s) for s in batch["sample_id"]], pa.string())}
        with torch.inference_mode():
            for v in self.views:
                # Ray Data's batches are read-only views: a writable copy keeps torch from warning
                # (once an actor, "undefined behavior") about a buffer it never writes anyway
                x = np.require(batch[f"x_{v}"], requirements=("C", "W"))
                x = _inputs(torch.from_numpy(x), self.device, self.channels_last)
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
        eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
        self.emit(
            f"[hssal] encode: {self.done}/{self.total} images (chunk {min(self.chunks_done + 1, self.chunks)}"
            f"/{self.chunks}{', written' if self.done == self.chunk_base else ''}), "
            f"{rate:.1f} img/s, ETA {eta}"
        )


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

    from hssal_ray import faults
    from hssal_ray.config import config_to_dict
    from hssal_ray.data.pipeline import collect_bad_samples, in_order, route, stream_blocks, stream_for
    from hssal_ray.scoring import map_on_actors, pool_failures, runtime_pool_size

    table = catalog.table
    n = table.num_rows
    chunks = _store._chunks(n)
    rows = sum(chunks[i][1] - chunks[i][0] for i in todo)
    batch = cfg.ssl.eval_batch_size
    actors, why = runtime_pool_size(  # a block is one Encoder batch (below)
        cfg.resources.encode_actors, cfg.resources.use_gpu, blocks=stream_blocks(rows, batch, batch)
    )
    emit = progress or log.info
    device = "GPU" if cfg.resources.use_gpu else "CPU"
    emit(f"[hssal] encode: {actors} {device} actor(s) ({why}), each holding a copy of the backbone")
    bar = EncodeProgress(rows, len(todo), emit)
    parts = {}
    for i in todo:
        s, e = chunks[i]
        part = table.slice(s, e - s).select(["sample_id", "source", "row", "label"])
        # per-image augmentation seeds from the manifest position: the same views for every run
        parts[i] = part.append_column("aug_seed", pa.array(np.arange(s, e, dtype=np.int64) * 7919 + 17))
    # One Ray Data run over every pending chunk, so the pool starts once and never waits on a chunk's last
    # block; results come back in order and each chunk is written as the stream passes it. That keeps
    # each Encoder batch inside one chunk (the same rows as a chunk encoded alone, so a resumed encode
    # gives the same store) when batches tile a chunk; otherwise each chunk is its own run.
    runs = [todo] if _store.CHUNK_ROWS % batch == 0 else [[i] for i in todo]
    _io.makedirs(path)
    kept = "The chunks of the store written so far are kept: rerunning the command resumes from them."
    with in_order():
        for run in runs:
            # One Encoder batch a block: a chunk is 64 blocks at the default batch, work for every actor of
            # a large pool, and each batch holds the same rows whatever the pool, so the features do not
            # depend on its size.
            ds = stream_for(
                cfg,
                pa.concat_tables([parts[i] for i in run]),
                root=catalog.root,
                kind=catalog.kind,
                views=views,
                run_dir=run_dir,
                rows_per_block=batch,
            )
            ds = map_on_actors(
                ds,
                Encoder,
                fn_constructor_kwargs=dict(
                    experiment=config_to_dict(cfg), views=views, fault_kill=faults.encoder_spec()
                ),
                batch_size=batch,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=1 if cfg.resources.use_gpu else 0,
                num_cpus=1,
            )
            stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
            with pool_failures("the encode", kept, "resources.encode_actors or ssl.eval_batch_size"):
                for k, out in route(stream, (parts[i].column("sample_id") for i in run), bar.batch):
                    i = run[k]
                    _io.atomic_write_parquet(_part(path, i), _align(parts[i], out, views))
                    bar.chunk(parts[i].num_rows)
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
        arr = _store._fsl_numpy(out.column(v))
        full = np.full((len(ids), width), np.nan, dtype=np.float16)
        ok = take >= 0
        full[ok] = arr[take[ok]]
        cols[v] = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), width)
    return pa.table(cols)
