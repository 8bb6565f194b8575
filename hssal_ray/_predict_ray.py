"""The Ray path of :mod:`hssal_ray.predict`: one Ray Data stream, an actor pool, parts in chunk order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from hssal_ray.data.pipeline import route
from hssal_ray.predict import Predictor, _part_path, _Progress, _write_part, log, predictions_table

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
    result columns at a time (:func:`route`): a chunk is written when the first row of a later
    chunk arrives (its missing rows failed to decode and are in the bad-sample parts).
    """
    import ray
    import ray.data

    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.pipeline import in_order, stream_blocks, stream_for
    from hssal_ray.scoring import map_on_actors, pool_failures, runtime_pool_size

    cfg = rm.cfg
    ensure_ray(resources if resources is not None else cfg.resources)
    use_gpu = float(ray.cluster_resources().get("GPU", 0.0)) > 0 if gpu is None else gpu
    table = pa.concat_tables([chunks[i] for i in todo])
    blocks = stream_blocks(table.num_rows, cfg.data.decode_batch_size)
    size, why = runtime_pool_size(actors or 0, use_gpu, blocks)  # auto: every free GPU, or the CPUs less one
    log.info("predict: %d %s actor(s) (%s)", size, "GPU" if use_gpu else "CPU", why)
    with in_order():  # parts follow the chunk order
        ds = stream_for(cfg, table, root=cat.root, kind=cat.kind, views=("none",), run_dir=out)
        ds = map_on_actors(
            ds,
            Predictor,
            fn_constructor_kwargs=dict(run_dir=rm.run_dir, round_idx=rm.round, top_k=top_k, use_gpu=use_gpu),
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=1 if use_gpu else 0,
            num_cpus=0 if use_gpu else 1,
        )
        written = 0
        ids_of = (chunks[i].column("sample_id") for i in todo)
        kept = "The parts written so far are kept: rerunning the command resumes from them."
        stream = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        shards = cat.kind == "shards"
        with pool_failures("predict", kept, "--actors or --batch-size"):
            for k, preds in route(stream, ids_of, progress.batch):
                i = todo[k]
                if preds is None:
                    preds = predictions_table([], np.zeros((0, len(rm.classes))), rm.classes, top_k)
                written += _write_part(_part_path(out, i), chunks[i], preds, tags[i], cat.root, shards)
                progress.chunk(preds.num_rows, chunks[i].column("source")[0].as_py())
    return written
