"""Sections on the trainer: step throughput, full fine-tuning with the evaluation actor, the scoring actor."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from benchmarks._gpu.loaders import Normalise, Shard, streams
from benchmarks._gpu.run import Run, _free, guarded
from benchmarks._gpu.sizes import LITE0, _r

log = logging.getLogger("benchmarks.gpu_check")


def _throughput_case(run: Run, cfg: Any, raw: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Time the product's worker loop (``run_worker``, no Ray) cycling the prepared step batches."""
    from benchmarks._worker_steps import run_worker_steps
    from hssal_ray.rounds import amp_dtype

    s = run.sizes
    norm = Normalise(*run.mean_std(cfg), run.dev)
    labeled = [{"x_weak": norm(bl["x_weak"].to(run.dev)), "label": bl["label"]} for bl, _ in raw]
    unlabeled = [
        {
            "x_weak": norm(bu["x_weak"].to(run.dev)),
            "x_strong": norm(bu["x_strong"].to(run.dev)),
            "label": bu["label"],
        }
        for _, bu in raw
    ]
    amp = amp_dtype(cfg.ssl.amp, run.dev)

    def after(step: int) -> None:
        if step == s.tp_warmup:
            run.sync()
            run.reset_peak()

    rows = run_worker_steps(
        cfg, run.num_classes, run.dev, labeled, unlabeled, s.tp_warmup + s.tp_steps, on_step=after
    )
    run.sync()
    times = [r["step_s"] for r in rows]
    losses = [_r(r["loss"]) for r in rows]
    dt = float(np.sum(times[s.tp_warmup :]))
    per_step = cfg.ssl.batch_size * (1 + 2 * cfg.ssl.uratio)
    q = max(1, len(losses) // 4)
    return {
        "weights": "packaged ImageNet (prepared file)" if cfg.ssl.weights else "random init",
        "amp": str(amp).replace("torch.", "") if amp is not None else "none",
        "channels_last": cfg.ssl.channels_last,
        "images_per_step": per_step,
        "first_step_s": _r(times[0], 3),
        "step_ms": _r(1000 * dt / s.tp_steps, 2),
        "img_s": _r(per_step * s.tp_steps / dt, 1),
        "peak_gpu_mem_gib": run.peak_gib(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_went_down": bool(np.mean(losses[-q:]) < np.mean(losses[:q])),
        "losses": losses,
    }


def sec_train_throughput(run: Run) -> dict[str, Any]:
    """FixMatch ``train_step`` images/s for Lite0 and ResNet-50, profile settings and fp32."""
    import torch

    s = run.sizes
    n_batches = 4
    base = run.profile_cfg()
    lab, unl = streams(run, base, n_batches)
    raw = [(lab[i], unl[i]) for i in range(n_batches)]  # real augmented batches, made once
    rows: list[dict[str, Any]] = []
    for model in (LITE0, "resnet50"):
        for case, extra in (("profile", ()), ("fp32", ("ssl.amp=none", "ssl.channels_last=false"))):
            cfg = run.profile_cfg(model, extra)
            row = {"model": model, "case": case}
            row.update(guarded(lambda cfg=cfg: _throughput_case(run, cfg, raw)))
            if case == "profile" and row["status"] == "ok":
                run.step_s[model] = row["step_ms"] / 1000.0
            rows.append(row)
            log.info("train_throughput %s %s: %s img/s", model, case, row.get("img_s", row["status"]))
            _free()
    return {
        "settings": {
            "profile": "configs/ucm.yaml",
            "batch": base.ssl.batch_size,
            "uratio": base.ssl.uratio,
            "image_size": base.data.image_size,
            "warmup_steps": s.tp_warmup,
            "timed_steps": s.tp_steps,
            "batches": f"{n_batches} real augmented step batches (the trainer's seeded streams), "
            "on the device, cycled",
            "torch_compile": False,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "timing": "the worker loop's own time inside train_step (ssl.train_loop.run_worker, no Ray); "
            "the step's metrics sync the host once per step",
            "note": "images/s counts labeled + weak + strong images per step",
        },
        "rows": rows,
    }


def sec_finetune(run: Run) -> dict[str, Any]:
    """Full FixMatch fine-tuning of Lite0 through the worker loop; the evaluation actor on the test split."""
    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.rounds import derive_seed
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl.train_loop import LocalContext, run_worker

    s = run.sizes
    base = run.profile_cfg()
    reserve = 0.0 if run.toy else s.min_s["scoring"] + 20.0  # evaluation + the scoring section
    cap = min(float(run.args.ft_max_s), run.remaining() - reserve)
    step_s = run.step_s.get(LITE0)
    if run.toy:
        steps = s.ft_steps_max
    else:
        # the loader, the first steps and the reports cost a little more than the bare step
        est = 1.3 * (step_s if step_s else 0.5)
        steps = int(min(s.ft_steps_max, run.args.ft_steps, cap / est))
        if steps < s.ft_steps_min:
            raise RuntimeError(
                f"only {cap:.0f} s left: {steps} steps would be below the minimum {s.ft_steps_min}"
            )
    cfg = run.profile_cfg(LITE0, [f"ssl.steps_per_round={steps}"])
    norm = Normalise(*run.mean_std(cfg), run.dev)
    lab, unl = streams(run, cfg, steps + 2)
    deadline = time.perf_counter() + (cap if not run.toy else 1e9)
    shards = {
        "labeled": Shard(lab, run.workers(0.15), run.dev, norm, deadline),
        "unlabeled": Shard(unl, run.workers(0.85), run.dev, norm, deadline),
    }

    class Ctx(LocalContext):
        def __init__(self, workdir: str) -> None:
            super().__init__(shards, workdir)
            self.device = run.dev
            self.reports: list[dict[str, Any]] = []

        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
            self.reports.append(dict(metrics))
            super().report(metrics, checkpoint_dir)

    config = {
        "experiment": config_to_dict(cfg),
        "num_classes": run.num_classes,
        "total_steps": steps,
        "init_dir": None,
        "round": 0,
        "ssl_on": True,
        "seed": derive_seed(cfg.seed, 0, "train"),
        "report_every": max(1, steps // 10),
        "threads_per_worker": max(1, int(cfg.resources.cpus_per_worker)),
        "fault_kill": None,
    }
    ctx = Ctx(str(run.work / "ft"))
    run.reset_peak()
    t = time.perf_counter()
    run_worker(config, ctx)
    run.sync()
    train_wall = time.perf_counter() - t
    peak = run.peak_gib()
    if ctx.checkpoint_dir is None:
        raise RuntimeError("the worker loop reported no checkpoint")
    run.ft_ckpt = ctx.checkpoint_dir
    curve = _windows(ctx.reports)

    # the evaluation actor on the test split (clean view, the product's CPU preprocessing)
    scorer = Scorer(run.ft_ckpt, config_to_dict(cfg), run.num_classes, mode="eval")
    mean, std = run.mean_std(cfg)
    hits = hits_other = 0
    t = time.perf_counter()
    for b in range(0, len(run.test_rows), cfg.ssl.eval_batch_size):
        rows = run.test_rows[b : b + cfg.ssl.eval_batch_size]
        x = augment_batch(run.images[rows], np.zeros(len(rows), np.int64), kind="none", mean=mean, std=std)
        out = scorer({"sample_id": run.ids[rows], "label": run.labels[rows], "x_none": x})
        hits += int((out.column("pred").to_numpy() == run.labels[rows]).sum())
        hits_other += int((out.column("pred_other").to_numpy() == run.labels[rows]).sum())
    eval_s = time.perf_counter() - t
    acc, acc_other = hits / len(run.test_rows), hits_other / len(run.test_rows)
    last = ctx.reports[-1] if ctx.reports else {}
    res = {
        "settings": {
            "profile": "configs/ucm.yaml",
            "model": f"{LITE0}, packaged ImageNet weights, finetune=full",
            "steps_planned": steps,
            "steps_per_round_in_profile": base.ssl.steps_per_round,
            "batch": cfg.ssl.batch_size,
            "uratio": cfg.ssl.uratio,
            "lr": cfg.ssl.lr,
            "lr_schedule": cfg.ssl.lr_schedule,
            "weight_decay": cfg.ssl.weight_decay,
            "p_cutoff": cfg.ssl.p_cutoff,
            "ema_m": cfg.ssl.ema_m,
            "amp": cfg.ssl.amp,
            "channels_last": cfg.ssl.channels_last,
            "labeled": len(run.lab_rows),
            "pool": len(run.pool_rows),
            "test": len(run.test_rows),
            "loader_workers": {k: v.workers for k, v in shards.items()},
            "time_cap_s": _r(cap, 1),
            "step_s_estimate": None if step_s is None else _r(step_s, 4),
            "loop": "hssal_ray.ssl.train_loop.run_worker (Ray Train's worker loop), in-process context",
        },
        "steps_run": int(last.get("step", 0)),
        "stopped_early": any(sh.stopped_early for sh in shards.values()),
        "train_wall_s": _r(train_wall, 2),
        "images_per_s": _r(last.get("images_per_s_per_worker", float("nan")), 1),
        "data_wait_s": _r(last.get("data_wait_s", float("nan")), 2),
        "step_s": _r(last.get("step_s", float("nan")), 2),
        "peak_gpu_mem_gib": peak,
        "loss_curve": curve,
        "pseudo_label_acc": _r(last.get("pseudo_label_acc", float("nan"))),
        "loss_went_down": bool(len(curve) >= 2 and curve[-1]["loss"] < curve[0]["loss"]),
        "eval_s": _r(eval_s, 3),
        "test_accuracy": _r(acc),
        "test_accuracy_other": _r(acc_other),
        "eval_model": cfg.ssl.eval_model,
    }
    if run.frozen_acc is not None:
        res["frozen_head_test_accuracy"] = _r(run.frozen_acc)
        res["finetune_minus_frozen_points"] = _r(100 * (acc - run.frozen_acc), 2)
    return res


def _windows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`benchmarks._worker_steps.window_means` of the worker loop's reports, rounded for the result."""
    from benchmarks._worker_steps import window_means

    return [{k: v if k == "steps" else _r(v) for k, v in w.items()} for w in window_means(reports)]


def sec_scoring(run: Run) -> dict[str, Any]:
    """The scoring actor on the pool (clean + strong view): rows/s, forward vs scores table."""
    import torch

    from hssal_ray.config import config_to_dict
    from hssal_ray.data.transforms import augment_batch
    from hssal_ray.rounds import save_checkpoint_dir
    from hssal_ray.scoring import Scorer
    from hssal_ray.ssl.train_loop import build_train_state

    cfg = run.profile_cfg(LITE0)
    ckpt = run.ft_ckpt
    source = "the finetune section's checkpoint"
    if ckpt is None:
        state = build_train_state(cfg, run.num_classes, torch.device("cpu"), total_steps=1)
        ckpt = str(run.work / "score_ckpt")
        save_checkpoint_dir(state, ckpt, {"step": 0})
        source = "packaged Lite0 weights, untrained head (no finetune checkpoint)"
    scorer = Scorer(ckpt, config_to_dict(cfg), run.num_classes, mode="score")
    mean, std = run.mean_std(cfg)
    bs = cfg.ssl.eval_batch_size
    rows_all = run.pool_rows
    seeds = rows_all.astype(np.int64) * 7919 + 17
    t = time.perf_counter()
    batches = []
    for b in range(0, len(rows_all), bs):
        rows, sd = rows_all[b : b + bs], seeds[b : b + bs]
        batches.append(
            {
                "sample_id": run.ids[rows],
                "x_none": augment_batch(run.images[rows], sd * 4, kind="none", mean=mean, std=std),
                "x_strong": augment_batch(run.images[rows], sd * 4 + 1, kind="strong", mean=mean, std=std),
            }
        )
    prep_s = time.perf_counter() - t
    scorer(batches[0])  # warm-up
    run.sync()
    run.reset_peak()
    fwd_s = total_s = 0.0
    n_rows = 0
    cols: list[str] = []
    for batch in batches:
        t = time.perf_counter()
        scorer._forward(batch["x_none"])
        scorer._forward(batch["x_strong"])
        run.sync()
        fwd_s += time.perf_counter() - t
        t = time.perf_counter()
        table = scorer(batch)
        total_s += time.perf_counter() - t
        n_rows += table.num_rows
        cols = table.column_names
    return {
        "settings": {
            "weights": source,
            "batch": bs,
            "views": ["none", "strong"],
            "amp": cfg.ssl.amp,
            "channels_last": cfg.ssl.channels_last,
        },
        "rows": n_rows,
        "rows_s": _r(n_rows / total_s, 1),
        "forward_only_rows_s": _r(n_rows / fwd_s, 1),
        "cpu_prep_s": _r(prep_s, 2),
        "peak_gpu_mem_gib": run.peak_gib(),
        "columns": cols,
        "note": "rows_s: Scorer.__call__ (two forwards + the scores table on CPU); "
        "forward_only: the two forwards",
    }
