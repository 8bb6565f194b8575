"""The embedding store of the frozen-encoder path: every image encoded once per run (or once per cache).

With ``ssl.finetune=frozen`` the backbone never changes, so the loop encodes each image of the
manifest once: its clean view and ``ssl.embed_views`` seeded weak and strong augmented views, as
pooled backbone features (fp16). Encoding is Ray Data batch inference: decode + augment tasks feed
an actor pool holding the backbone (one actor per GPU with ``resources.use_gpu``), chunk by chunk.

Layout (a directory, local or URI)::

    meta.json             key, backbone, views, dim, chunks; "complete": true once every chunk is in
    part-00000.parquet    rows [0, chunk_rows) of the manifest: sample_id, none, weak_0.., strong_0..

Each part is written atomically, so a killed encode leaves only whole parts: a rerun checks them
(row count and ids) and encodes what is missing; nothing half-written is trusted. The store is keyed
by everything that determines it (images, backbone, weights, size, normalisation, views), so
``data.embedding_cache`` can share one store between runs and seeds: a key mismatch is a new store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hssal_ray import _io
from hssal_ray.errors import DataError

__all__ = ["EmbeddingStore", "store_key", "store_path", "ensure_store", "view_names", "STORE_VERSION"]

log = logging.getLogger(__name__)

STORE_VERSION = 1
CHUNK_ROWS = 4096


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


@dataclass
class EmbeddingStore:
    """A loaded store: features of every manifest row, row-aligned with ``ids``.

    Attributes:
        path: Where it lives.
        ids: (n,) sample ids (object).
        views: view name -> (n, d) float16 pooled features.
        missing: (n,) bool, rows that could not be decoded (zero features; never used).
    """

    path: str
    ids: np.ndarray
    views: dict[str, np.ndarray]
    missing: np.ndarray

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.views["none"].shape[1])

    def rows_of(self, sample_ids: Any) -> np.ndarray:
        """Row indices of ``sample_ids`` (int64).

        Raises:
            DataError: An id is not in the store.
        """
        index = {s: i for i, s in enumerate(self.ids)}
        try:
            return np.fromiter((index[str(s)] for s in sample_ids), dtype=np.int64)
        except KeyError as err:
            raise DataError(f"sample {err.args[0]!r} is not in the embedding store {self.path}") from None


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
    """Encode what the store lacks (Ray Data actor pool), then load it.

    Args:
        cfg: The experiment config (``ssl.finetune=frozen``).
        catalog: The run's manifest (every split is encoded).
        run_dir: The run directory (bad samples are listed there).
        progress: Called with one line per finished encode (default: log).
    """
    table = catalog.table
    key = store_key(cfg, table.column("sample_id"), catalog.root)
    path = store_path(cfg, run_dir, key)
    views = view_names(cfg.ssl.embed_views)
    meta_path = _io.join(path, "meta.json")
    n = table.num_rows
    ids_all = table.column("sample_id").to_pylist()
    meta = _io.read_json(meta_path) if _io.exists(meta_path) else None
    if meta is not None and meta.get("key") != key:
        raise DataError(
            f"embedding store {path} was built for other inputs (key {meta.get('key')} != {key}); "
            "remove it or use another run directory"
        )
    if not (meta and meta.get("complete")):
        todo = [i for i, (s, e) in enumerate(_chunks(n)) if not _part_ok(path, i, ids_all[s:e], views)]
        if todo:
            _encode(cfg, catalog, run_dir, path, todo, views, progress)
        _io.atomic_write_json(
            meta_path,
            {
                "key": key,
                "version": STORE_VERSION,
                "model": cfg.ssl.model,
                "weights": cfg.ssl.weights,
                "image_size": cfg.data.image_size,
                "views": list(views),
                "rows": n,
                "chunks": len(_chunks(n)),
                "complete": True,
            },
        )
    return _load(path, n, views)


def _fsl_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)


def _load(path: str, n: int, views: tuple[str, ...]) -> EmbeddingStore:
    ids: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {v: [] for v in views}
    for i in range(len(_chunks(n))):
        t = _io.read_parquet(_part(path, i))
        ids.append(np.asarray(t.column("sample_id").to_pylist(), dtype=object))
        for v in views:
            cols[v].append(np.asarray(_fsl_numpy(t.column(v)), dtype=np.float16))
    out = {v: np.concatenate(c) for v, c in cols.items()}
    missing = ~np.isfinite(out["none"].astype(np.float32)).all(1)
    return EmbeddingStore(path=path, ids=np.concatenate(ids), views=out, missing=missing)


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


def _encode(
    cfg: Any,
    catalog: Any,
    run_dir: str,
    path: str,
    todo: list[int],
    views: tuple[str, ...],
    progress: Any,
) -> None:
    import time

    import ray
    import ray.data
    from tqdm.auto import tqdm

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
    t0 = time.perf_counter()
    bar = tqdm(total=rows, desc="encode", unit="img", disable=None, leave=False)
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
        got = ray.get(ds.to_arrow_refs())
        out = pa.concat_tables(got) if got else None
        _io.makedirs(path)
        _io.atomic_write_parquet(_part(path, i), _align(part, out, views))
        bar.update(e - s)
    bar.close()
    collect_bad_samples(run_dir)
    secs = time.perf_counter() - t0
    rate = rows / max(secs, 1e-9)
    msg = f"[hssal] encoded {rows} images x {len(views)} views in {secs:.1f} s ({rate:.1f} img/s)"
    (progress or log.info)(msg)


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
