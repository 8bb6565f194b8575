"""The Ray path of :mod:`hssal_ray.predict`: one Ray Data stream, an actor pool, parts in chunk order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray.errors import DataError
from hssal_ray.predict import Predictor, _part_path, _Progress, _write_part, log, predictions_table
from hssal_ray.scoring import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES

__all__ = ["predict_ray", "route"]


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
                    raise DataError(f"prediction for {ids[e]!r}, which is in no pending chunk")
            s = e
    yield n, pa.concat_tables(buf) if buf else None
    while advance():
        yield n, None


def predict_ray(
    rm: Any,
    cat: Any,
    chunks: list[pa.Table],
    tags: list[str],
    todo: list[int],
    out: str,
    progress: _Progress,
    top_k: int,
    batch: int,
    actors: int | None,
    gpu: bool | None,
    resources: Any,
) -> int:
    """Predict the ``todo`` chunks through Ray Data; returns the rows written.

    With ``preserve_order`` the results come back in input order, so the driver holds one chunk's
    result columns at a time (:func:`route`): a chunk is written when the first row of a later
    chunk arrives (its missing rows failed to decode and are in the bad-sample parts).
    """
    import ray
    import ray.data
    from ray.data import DataContext

    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.pipeline import stream_for
    from hssal_ray.scoring import runtime_pool_size

    cfg = rm.cfg
    ensure_ray(resources if resources is not None else cfg.resources)
    use_gpu = float(ray.cluster_resources().get("GPU", 0.0)) > 0 if gpu is None else gpu
    size, why = runtime_pool_size(actors or 0, use_gpu)  # auto: every free GPU, or the free CPUs less one
    log.info("predict: %d %s actor(s) (%s)", size, "GPU" if use_gpu else "CPU", why)
    DataContext.get_current().execution_options.preserve_order = True  # parts follow the chunk order
    table = pa.concat_tables([chunks[i] for i in todo])
    ds = stream_for(cfg, table, root=cat.root, kind=cat.kind, views=("none",), run_dir=out)
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs=dict(run_dir=rm.run_dir, round_idx=rm.round, top_k=top_k, use_gpu=use_gpu),
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
        max_restarts=ACTOR_MAX_RESTARTS,
        max_task_retries=ACTOR_MAX_TASK_RETRIES,
    )
    written = 0
    ids_of = (chunks[i].column("sample_id") for i in todo)
    for k, preds in route(ds.iter_batches(batch_size=None, batch_format="pyarrow"), ids_of, progress.batch):
        i = todo[k]
        if preds is None:
            preds = predictions_table([], np.zeros((0, len(rm.classes))), rm.classes, top_k)
        written += _write_part(_part_path(out, i), chunks[i], preds, tags[i], cat.root, cat.kind == "shards")
        progress.chunk(preds.num_rows, chunks[i].column("source")[0].as_py())
    return written
