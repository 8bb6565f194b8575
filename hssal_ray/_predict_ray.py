"""The Ray path of :mod:`hssal_ray.predict`: one Ray Data stream, an actor pool, parts in chunk order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray.errors import DataError
from hssal_ray.predict import Predictor, _part_path, _Progress, _write_part, predictions_table
from hssal_ray.scoring import ACTOR_MAX_RESTARTS, ACTOR_MAX_TASK_RETRIES

__all__ = ["predict_ray"]


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
    result columns at a time: a chunk is written when the first row of a later chunk arrives
    (its missing rows failed to decode and are in the bad-sample parts).
    """
    import ray
    import ray.data
    from ray.data import DataContext

    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.pipeline import stream_for
    from hssal_ray.scoring import actor_pool_size

    cfg = rm.cfg
    ensure_ray(resources if resources is not None else cfg.resources)
    use_gpu = float(ray.cluster_resources().get("GPU", 0.0)) > 0 if gpu is None else gpu
    n_gpu = int(ray.cluster_resources().get("GPU", 0.0))
    want = actors or (n_gpu if use_gpu else cfg.resources.score_actors)
    size = actor_pool_size(max(1, want), float(ray.cluster_resources().get("CPU", 0.0)), use_gpu)
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
    k, written = 0, 0
    current = set(chunks[todo[0]].column("sample_id").to_pylist())
    buf: list[pa.Table] = []

    def flush() -> None:
        nonlocal k, current, buf, written
        i = todo[k]
        preds = (
            pa.concat_tables(buf)
            if buf
            else predictions_table([], np.zeros((0, len(rm.classes))), rm.classes, top_k)
        )
        written += _write_part(_part_path(out, i), chunks[i], preds, tags[i], cat.root, cat.kind == "shards")
        progress.chunk(preds.num_rows, chunks[i].column("source")[0].as_py())
        k, buf = k + 1, []
        current = set(chunks[todo[k]].column("sample_id").to_pylist()) if k < len(todo) else set()

    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        progress.batch(b.num_rows)
        ids = b.column("sample_id").to_pylist()
        s = 0
        while s < len(ids):
            e = s
            while e < len(ids) and ids[e] in current:
                e += 1
            if e > s:
                buf.append(b.slice(s, e - s))
            if e < len(ids):  # the stream moved on: this chunk is complete (missing rows failed to decode)
                if k >= len(todo) - 1:
                    raise DataError(f"prediction for {ids[e]!r}, which is in no pending chunk")
                flush()
            s = e
    while k < len(todo):
        flush()
    return written
