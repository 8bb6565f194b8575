"""Archive scale: catalog scan -> pool scoring -> HAL query over 10k, 100k and 1M generated images.

``python -m benchmarks.archive_scale --sizes 10000 100000 1000000 --out benchmarks/results``

For every size N the benchmark

1. generates (once; reused while the parameters match) an unlabeled archive of N distinct 32x32 RGB
   PNG images in Parquet shards (:mod:`benchmarks._archive_data`) under ``--work-dir`` (default
   ``/tmp/hssal_archive_scale``, never in the repository);
2. runs the pipeline in a *fresh* Python process (so peak memory is per size) with the loop's own
   code paths: :func:`hssal_ray._ray.ensure_ray`, :func:`hssal_ray.data.catalog.scan`,
   :func:`hssal_ray.scoring.score_pool` (Ray Data decode tasks + an actor pool holding a tiny
   randomly initialised ``hssal_small_cnn``, written as a round's checkpoint by the training code's
   own :func:`~hssal_ray.ssl.train_loop.build_train_state` and ``write_checkpoint``), then the
   query stage's :func:`hssal_ray.loop.query_batch.run_query` (``load_pool`` + HAL ``select``);
3. measures per stage: wall time (and CPU seconds of the driver and all its Ray processes, which
   depends less on the other jobs of a shared machine), the driver's peak RSS (``VmHWM``, reset
   before each stage through ``/proc/self/clear_refs``), and the RSS of the Ray worker processes
   (``ray::*`` descendants of the driver, :class:`benchmarks._sampler.RaySampler`): the largest
   single worker and the largest sum over workers. The embedding matrix (N x d fp16) that the query
   holds is reported apart, so that memory *excluding* it can be compared across sizes.

Scoring wall includes the per-call start-up (actor start, model load); the same start-up is also
measured alone on a 512-image warm-up call just before, and ``score_marginal_img_s`` leaves it out.

Checks reported (targets): driver peak RSS excluding the embedding matrix, 1M / 100k
<= 1.5x; time 1M / 100k / 10 <= ~1.0 (no worse than linear). ``--smoke`` runs one 2,000-image size.
Writes ``<out>/archive_scale.json`` and ``.md`` (``--smoke``: ``archive_scale_smoke.*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._archive_data import NUM_CLASSES, generate_archive, sample_id
from benchmarks._archive_report import MODULE, _flat, report
from benchmarks._common import set_ray_env, setup_logging, write_initial_checkpoint
from benchmarks._sampler import CpuTracker, RaySampler, peak_mb, reset_peak_rss

log = logging.getLogger("benchmarks.archive_scale")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = "/tmp/hssal_archive_scale"


def experiment(spec: dict[str, Any]) -> Any:
    """The resolved config of a size run (tiny CNN, HAL, local Ray with ``num_cpus``)."""
    from hssal_ray.config import config_from_dict

    return config_from_dict(
        {
            "seed": spec["seed"],
            "data": {"root": spec["archive"], "layout": "shards", "image_size": spec["size"], "bands": 3},
            "ssl": {"model": "hssal_small_cnn", "model_kwargs": {"widths": list(spec["widths"])}},
            "query": {"strategy": "hal", "budget": spec["budget"]},
            "resources": {
                "num_cpus": spec["num_cpus"],
                "score_actors": spec["score_actors"],
                "object_store_memory": spec["object_store_memory"],
            },
        }
    )


def run_size(spec: dict[str, Any]) -> dict[str, Any]:
    """Scan, score and query one archive in this (fresh) process; returns the result row."""
    set_ray_env()
    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.pipeline import collect_bad_samples
    from hssal_ray.loop.query_batch import run_query
    from hssal_ray.query import load_pool
    from hssal_ray.scoring import score_pool

    n, run_dir = int(spec["n"]), spec["run_dir"]
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    cfg = experiment(spec)
    ckpt = os.path.join(run_dir, "checkpoint")
    dim = write_initial_checkpoint(cfg, ckpt, NUM_CLASSES)
    can_reset = reset_peak_rss()
    row: dict[str, Any] = {"n": n, "embed_dim": dim, "load_1m_before": round(os.getloadavg()[0], 2)}
    stages: dict[str, dict[str, Any]] = {}
    sampler = RaySampler().start()
    cpu = CpuTracker().start(1.0)

    def stage(name: str) -> tuple[float, float, float]:
        sampler.stage(name)
        reset_peak_rss()
        return time.perf_counter(), time.time(), cpu.total()

    def done(name: str, t: tuple[float, float, float], **extra: Any) -> dict[str, Any]:
        wall = time.perf_counter() - t[0]
        sampler.sample()
        stages[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu.total() - t[2], 2),
            "driver_peak_mb": round(peak_mb(), 1),
            **extra,
        }
        log.info("n=%d %-7s %.1f s, driver peak %.0f MiB", n, name, wall, stages[name]["driver_peak_mb"])
        return stages[name]

    t = stage("ray_init")
    ensure_ray(cfg.resources)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    for attr in ("enable_progress_bars", "print_on_execution_start", "enable_operator_progress_bars"):
        if hasattr(ctx, attr):
            setattr(ctx, attr, False)
    done("ray_init", t)

    t = stage("scan")
    cat = scan(spec["archive"], test_fraction=cfg.data.test_fraction, seed=cfg.seed, layout="shards")
    pool_rows = cat.split_table("train")  # the whole unlabeled archive (runner: _pool_rows)
    done("scan", t, rows=cat.table.num_rows)

    common = dict(
        root=cat.root, kind=cat.kind, ckpt_dir=ckpt, num_classes=len(cat.class_names), run_dir=run_dir
    )
    warm_n = min(int(spec["warmup_rows"]), pool_rows.num_rows)
    t = stage("warmup")
    score_pool(
        cfg, pool_rows.slice(0, warm_n), out_path=os.path.join(run_dir, "warmup_scores.parquet"), **common
    )
    done("warmup", t, rows=warm_n)

    scores = os.path.join(run_dir, "scores.parquet")
    t = stage("score")
    score_pool(cfg, pool_rows, out_path=scores, **common)
    bad = collect_bad_samples(run_dir)
    s = done("score", t, rows=pool_rows.num_rows, bad_samples=bad)
    s["img_s"] = round(pool_rows.num_rows / s["wall_s"], 1)
    s["img_per_cpu_s"] = round(pool_rows.num_rows / s["cpu_s"], 1) if s["cpu_s"] > 0 else None
    s["parts"] = len([p for p in os.listdir(scores) if p.endswith(".parquet")])
    del pool_rows

    t = stage("query")  # the loop's query stage, on a pool with no labeled ids yet
    picks, _, _, info = run_query(cfg, scores, cfg.query.budget, set(), 0)
    q = done(
        "query",
        t,
        load_s=round(info["query_load_s"], 3),
        select_s=round(info["query_select_s"], 3),
        picks=len(picks),
        distinct_picks=len(set(picks)),
    )
    # the scored ids (that column only), after the stage's time and memory are taken
    pool = load_pool(scores, columns=[])
    emb_mb = info["query_embedding_mb"]
    q["budget"] = min(cfg.query.budget, info["query_pool_rows"])
    q["driver_peak_excl_emb_mb"] = round(q["driver_peak_mb"] - emb_mb, 1)
    q["coarse_k"] = info.get("coarse_k")

    # every generated id scored exactly once (load_pool already rejects duplicates)
    expected = np.array([sample_id(i) for i in range(n)], dtype=object)
    got = np.sort(pool.ids.astype(str))
    ids_ok = bool(len(pool.ids) == n and np.array_equal(got, expected.astype(str)))
    cat_ok = bool(cat.table["sample_id"].to_pylist() == expected.tolist())
    sampler.stage("end")
    sampler.stop()
    cpu.stop()

    import ray

    ray.shutdown()
    drv = {k: v["driver_peak_mb"] for k, v in stages.items() if k != "ray_init"}
    row.update(
        {
            "stages": stages,
            "ray_processes": {
                k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in sampler.stats.items()
            },
            "worker_max_hwm_mb": round(max(sampler.hwm.values(), default=0.0), 1),
            "daemon_peak_rss_mb": {
                k: round(v, 1) for k, v in sorted(sampler.daemon_peaks.items(), key=lambda kv: -kv[1])[:12]
            },
            "ray_worker_processes_seen": len(sampler.hwm),
            "emb_mb": round(emb_mb, 2),
            "scored_rows": int(len(pool.ids)),
            "ids_ok": ids_ok,
            "catalog_ids_ok": cat_ok,
            "driver_peak_mb": round(max(drv.values()), 1),
            "driver_peak_excl_emb_mb": round(
                max(max(v for k, v in drv.items() if k != "query"), q["driver_peak_excl_emb_mb"]), 1
            ),
            "peak_reset_ok": can_reset,
            "load_1m_after": round(os.getloadavg()[0], 2),
            "scores_path": scores,
        }
    )
    return row


def _exit_with_parent(poll_s: float = 2.0) -> None:
    """Interrupt this worker (then exit) if the process that started it dies, e.g. on a test timeout."""
    import _thread

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("parent %d is gone: stopping", parent)
        _thread.interrupt_main()
        time.sleep(30)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_size_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`run_size` in a fresh ``python -m benchmarks.archive_scale --worker`` process."""
    out = Path(spec["run_dir"] + ".result.json")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", MODULE, "--worker", json.dumps({**spec, "result": str(out)})]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"size {spec['n']} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(out.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="archive sizes"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="one 2,000-image archive, budget 100 (for the tests)"
    )
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument(
        "--work-dir", default=DEFAULT_WORK, help="archives and run outputs (default: %(default)s)"
    )
    ap.add_argument("--budget", type=int, default=1000, help="HAL query budget (default: %(default)s)")
    ap.add_argument(
        "--widths", default="8,16,64", help="hssal_small_cnn widths; the last = d (default: %(default)s)"
    )
    ap.add_argument(
        "--num-cpus", type=int, default=2, help="CPUs of the local Ray runtime (default: %(default)s)"
    )
    ap.add_argument(
        "--score-actors",
        type=int,
        default=1,
        help="scoring actors (resources.score_actors; default: %(default)s, see the notes)",
    )
    ap.add_argument(
        "--rows-per-shard", type=int, default=10_000, help="rows per shard file (default: %(default)s)"
    )
    ap.add_argument(
        "--gen-procs", type=int, default=2, help="processes generating images (default: %(default)s)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--timeout", type=float, default=5400, help="seconds allowed per size (default: %(default)s)"
    )
    ap.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep scores/run folders of all sizes (default: only the smallest)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    if args.score_actors >= args.num_cpus:
        ap.error(
            "--score-actors must be < --num-cpus: Ray Data's write tasks need a free CPU "
            "(else score_pool hangs)"
        )
    if args.worker:
        _exit_with_parent()
        spec = json.loads(args.worker)
        row = run_size(spec)
        Path(spec["result"]).write_text(json.dumps(row, indent=2) + "\n")
        return 0

    sizes = [2000] if args.smoke else sorted(set(args.sizes))
    budget = min(args.budget, 100) if args.smoke else args.budget
    widths = [int(w) for w in args.widths.split(",")]
    name = "archive_scale_smoke" if args.smoke else "archive_scale"
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    raw: list[dict[str, Any]] = []
    failures: dict[int, str] = {}
    for n in sizes:
        gen = generate_archive(
            n, work, seed=args.seed, rows_per_shard=args.rows_per_shard, procs=args.gen_procs
        )
        spec = {
            "n": n,
            "archive": gen["root"],
            "run_dir": str(work / f"run_n{n}"),
            "widths": widths,
            "budget": budget,
            "seed": args.seed,
            "size": 32,
            "num_cpus": args.num_cpus,
            "score_actors": args.score_actors,
            "object_store_memory": 1_000_000_000,
            "warmup_rows": 512,
        }
        log.info(
            "size %d: archive %s (%s)",
            n,
            gen["root"],
            "reused" if gen["reused"] else f"generated in {gen['seconds']} s",
        )
        try:
            row = run_size_subprocess(spec, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log.error("size %d failed: %s", n, e)
            failures[n] = str(e)[-2000:]
            continue
        row["generate_s"] = gen["seconds"]
        row["generated_now"] = not gen["reused"]
        row["archive"] = {k: gen[k] for k in ("root", "images", "shards", "bytes")}
        st = row["stages"]
        marginal = st["score"]["wall_s"] - st["warmup"]["wall_s"]
        row["score_marginal_img_s"] = round(n / marginal, 1) if marginal > 0 else None
        raw.append(row)
        log.info("size %d: %s", n, json.dumps(_flat(row)))
        report(
            args, name, sizes, budget, widths, raw, failures, load_before
        )  # partial results after each size
    if not args.keep_runs:
        for row in raw[1:]:
            shutil.rmtree(str(Path(row["scores_path"]).parent), ignore_errors=True)
    report(args, name, sizes, budget, widths, raw, failures, load_before)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    raise SystemExit(main())
