"""Sections on frozen features: the encode actor on every view, then the frozen head on those features."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from benchmarks._gpu.loaders import _identity, _loader
from benchmarks._gpu.run import Run
from benchmarks._gpu.sizes import _r


def sec_encode(run: Run) -> dict[str, Any]:
    """The encode actor on every image's clean + weak + strong views; the backbone alone; CPU augmentation."""
    import torch

    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.frozen.store import Encoder, view_names

    cfg = run.frozen_cfg()
    views = view_names(cfg.frozen.embed_views)
    mean, std = run.mean_std(cfg)
    enc = Encoder(config_to_dict(cfg), views)
    n, bs = len(run.ids), cfg.ssl.eval_batch_size
    seeds = np.arange(n, dtype=np.int64) * 7919 + 17  # the store's per-image seeds (manifest position)

    class Views:
        def __len__(self) -> int:
            return math.ceil(n / bs)

        def __getitem__(self, b: int) -> dict[str, Any]:
            rows = np.arange(b * bs, min(n, (b + 1) * bs))
            out: dict[str, Any] = {"sample_id": run.ids[rows]}
            for i, v in enumerate(views):
                x = augment_batch(
                    run.images[rows], seeds[rows] * 4 + i, kind=v.split("_", 1)[0], mean=mean, std=std
                )
                out[f"x_{v}"] = torch.from_numpy(x)  # tensors leave a worker through shared memory
            return out

    def arrays(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    t = time.perf_counter()
    enc(arrays(Views()[0]))  # warm-up (kernel selection), not timed
    run.sync()
    first_s = time.perf_counter() - t
    loader = _loader(Views(), run.workers(1.0), pin=False, collate=_identity)
    feats: dict[str, list[np.ndarray]] = {v: [] for v in views}
    enc_s = 0.0
    run.reset_peak()
    t_all = time.perf_counter()
    for batch in loader:
        batch = arrays(batch)
        t = time.perf_counter()
        table = enc(batch)
        enc_s += time.perf_counter() - t
        for v in views:
            col = table.column(v).combine_chunks()  # fixed-size lists of the features
            feats[v].append(col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1))
    wall = time.perf_counter() - t_all
    run.views = {v: np.concatenate(f).astype(np.float16) for v, f in feats.items()}
    dim = int(run.views["none"].shape[1])

    # the backbone alone on a device-resident batch: NCHW vs channels_last (what the actor runs by default)
    x = torch.from_numpy(augment_batch(run.images[:bs], seeds[:bs], kind="none", mean=mean, std=std)).to(
        run.dev
    )
    amp = torch.bfloat16 if run.cuda else None
    fwd: dict[str, float] = {}
    for fmt in ("nchw", "channels_last"):
        layout = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        bb = enc.backbone.to(memory_format=layout)  # in place: the model ends the loop in channels_last
        xi = x.contiguous(memory_format=layout)
        with (
            torch.inference_mode(),
            torch.autocast(run.dev.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            bb(xi)
            run.sync()
            t = time.perf_counter()
            reps = 2 if run.toy else 10
            for _ in range(reps):
                bb(xi)
            run.sync()
        fwd[f"backbone_{fmt}_img_s"] = _r(reps * len(xi) / (time.perf_counter() - t), 1)

    # the CPU side: the product's augmentation + normalisation per image, one process
    cpu = {}
    m = min(64, n)
    for kind in ("none", "weak", "strong"):
        t = time.perf_counter()
        augment_batch(run.images[:m], seeds[:m], kind=kind, mean=mean, std=std)
        cpu[f"cpu_aug_{kind}_ms_per_image"] = _r(1000 * (time.perf_counter() - t) / m, 3)
    return {
        "settings": {
            "recipe": "configs/ucm_cpu.yaml (frozen Lite0, packaged ImageNet weights)",
            "views": list(views),
            "batch": bs,
            "amp": "bf16" if run.cuda and cfg.ssl.amp != "none" else "none",
            "channels_last_in_actor": bool(cfg.ssl.channels_last),
            "loader_workers": run.workers(1.0),
        },
        "images": n,
        "dim": dim,
        "first_call_s": _r(first_s, 3),
        "encoder_s": _r(enc_s, 3),
        "img_s_per_view": _r(n * len(views) / enc_s, 1),
        "images_s_all_views": _r(n / enc_s, 1),
        "wall_s": _r(wall, 2),
        "img_s_per_view_end_to_end": _r(n * len(views) / wall, 1),
        "peak_gpu_mem_gib": run.peak_gib(),
        **fwd,
        **cpu,
        "note": "encoder_s: the actor's calls (host float32 batch -> device -> features -> host fp16); "
        "end_to_end adds the CPU augmentation in DataLoader workers",
    }


def sec_frozen_head(run: Run) -> dict[str, Any]:
    """The frozen-head recipe (``train_head``) on the encoded features, 8% labels: test accuracy."""
    from hssal_ray.frozen.head import predict_views, train_head
    from hssal_ray.rounds import derive_seed

    if run.views is None:
        raise RuntimeError("needs the encode section's features (it did not run)")
    cfg = run.frozen_cfg()
    t = time.perf_counter()
    state, metrics = train_head(
        cfg,
        run.views,
        run.lab_rows,
        run.labels[run.lab_rows],
        run.pool_rows,
        run.labels[run.pool_rows],
        run.num_classes,
        stats_rows=run.train_rows,
        seed=derive_seed(cfg.seed, 0, "train"),
        ssl_on=True,
    )
    train_s = time.perf_counter() - t
    y = run.labels[run.test_rows]
    heads = {"ema": state.ema.module, "online": state.model}
    acc = {
        w: float((predict_views(h, run.views, run.test_rows, cfg.frozen.tta_views).argmax(1) == y).mean())
        for w, h in heads.items()
    }
    run.frozen_acc = acc[cfg.ssl.eval_model]
    s, f = cfg.ssl, cfg.frozen
    return {
        "settings": {
            "recipe": "configs/ucm_cpu.yaml",
            "steps": s.steps_per_round,
            "batch": s.batch_size,
            "uratio": s.uratio,
            "lr": s.lr,
            "weight_decay": s.weight_decay,
            "pseudo_labels": f.pseudo_labels,
            "graph_k": f.graph_k,
            "graph_alpha": f.graph_alpha,
            "graph_balance": f.graph_balance,
            "tta_views": f.tta_views,
            "feature_norm": f.feature_norm,
            "eval_model": s.eval_model,
            "device": "cpu (train_head trains on CPU)",
            "cpu_threads": __import__("torch").get_num_threads(),
            "labeled": len(run.lab_rows),
            "pool": len(run.pool_rows),
            "test": len(run.test_rows),
        },
        "train_s": _r(train_s, 2),
        "test_accuracy": _r(run.frozen_acc),
        "test_accuracy_other": _r(acc["online" if s.eval_model == "ema" else "ema"]),
        "metrics": {k: _r(v) for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)},
    }
