"""Frozen-encoder path at archive scale: one-time graph build and whole rounds on 10k, 100k and 1M images.

``python -m benchmarks.frozen_scale --sizes 10000 100000 1000000``

For every size N the benchmark

1. writes (once; reused while the parameters match) a synthetic embedding store of the real shape
   under ``--work-dir`` (default ``/tmp/hssal_frozen_scale``, never in the repository): d=1280
   float16 pooled features of the clean view and ``frozen.embed_views`` = 2 weak and 2 strong views
   (12.8 KB an image), 21 classes of clustered, rectified features (class centres, sub-modes, a
   low-rank spread and noise; a weak view adds a little noise, a strong one more), through the
   store's own writer (:func:`hssal_ray.frozen.store.write_arrays`), as the encode leaves it;
2. in a *fresh* Python process (peak memory per size), single-threaded (torch, faiss and BLAS on
   one thread), runs the product's own code on it: :func:`hssal_ray.frozen.store.open_store`, a
   :class:`hssal_ray.loop.context.RunContext` holding a synthetic manifest (train split N - test,
   test split min(N/5, 10,000), 2% of the training split labeled at round 0), the TypiClust cold start
   that round 0 would run at that 2% (:func:`hssal_ray.loop.cold_start.select_cold_start`: the train
   split's clean features, then TypiClust; measured, not used: the rounds start from a random 2%),
   the one-time statistics and k-NN graph (:func:`hssal_ray.frozen.split_cache.run_stats`,
   ``run_graph``), then two rounds of the frozen learner's
   :meth:`~hssal_ray.learners.frozen.FrozenLearner.train`, ``score`` and
   :func:`hssal_ray.loop.query_batch.run_query` with the learner's store-read embeddings, as the
   query stage calls it (the picks labeled in between, from the synthetic labels; the same query
   reading the scores file's embedding column runs beside it, ``rK_query_column``, outside the
   round's sum, and must pick the same batch) and ``evaluate``, all with the ``configs/ucm_cpu.yaml``
   recipe (500 steps of a teacher and a student head, graph pseudo-labels, HAL budget 34);
3. measures per step: CPU seconds (the process's own clock, ``time.process_time``, nanoseconds: ``/proc``'s
   10 ms ticks would read a tiny step as 0; one thread, so they are what one idle core takes), wall
   seconds (meaningless on a shared machine, kept for the record) and peak RSS (``VmHWM``, reset
   before each step: :func:`benchmarks._sampler.reset_peak_rss`); and the graph's recall@10
   against the exact search as the build measures it (100 sampled rows).

The round is round 1 (warm-started from round 0, as every later round): train + score (with the score
stage's stability measure against round 0, :func:`hssal_ray.loop.stages.score.prediction_change`) + query.
Checks (targets of issue 28): a 1M round <= 60 CPU-s after the one-time graph build; the graph
build for 1M <= 10 min; peak RSS at 1M <= 6 GB; round CPU time 1M / (10 x 100k) <= 1.2.
``--smoke`` runs one tiny size in this process (a test runs it). Writes ``<out>/frozen_scale.json``
and ``.md`` (``--smoke``: ``frozen_scale_smoke.*``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import md_table, setup_logging, write_result
from benchmarks._sampler import peak_mb, reset_peak_rss

log = logging.getLogger("benchmarks.frozen_scale")

MODULE = "benchmarks.frozen_scale"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = "/tmp/hssal_frozen_scale"
NUM_CLASSES = 21
DIM = 1280
EMBED_VIEWS = 2
LABELED_FRACTION = 0.02
GEN_ROWS = 16_384
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
BUDGETS = ("query.budget=34", "loop.initial_labeled=34", "loop.total_budget=134")
"""The recipe's UCM budgets as counts at every size (its fractions would query 2% of a 1M pool a round)."""
TARGETS = {"round_cpu_s_1m": 60.0, "graph_wall_s_1m": 600.0, "peak_rss_gb_1m": 6.0, "round_ratio": 1.2}


def sample_id(i: int) -> str:
    """The id of synthetic row ``i`` (zero-padded: sorted ids = row order, as a manifest is)."""
    return f"img{i:08d}.png"


# ------------------------------------------------------------------------------------ the store


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1]).integers(0, NUM_CLASSES, n).astype(np.int32)


def _blocks(n: int, dim: int, seed: int) -> Any:
    """Blocks of ``{view: (m, dim) float16}`` of the synthetic store (torch: fast float16 casts)."""
    import torch

    from hssal_ray.frozen.store import view_names

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(NUM_CLASSES, dim, generator=g)
    modes = centres[:, None, :] + 0.6 * torch.randn(NUM_CLASSES, 4, dim, generator=g)
    bases = torch.randn(NUM_CLASSES, 8, dim, generator=g) / 8**0.5
    y_all = torch.from_numpy(_labels(n, seed).astype(np.int64))
    names = view_names(EMBED_VIEWS)
    for s in range(0, n, GEN_ROWS):
        m = min(GEN_ROWS, n - s)
        gb = torch.Generator().manual_seed(seed * 1_000_003 + s)
        y = y_all[s : s + m]
        x = modes[y, torch.randint(0, 4, (m,), generator=gb)] + 1.0 * torch.randn(m, dim, generator=gb)
        coef = 0.8 * torch.randn(m, 8, generator=gb)
        for c in range(NUM_CLASSES):
            sel = y == c
            x[sel] += coef[sel] @ bases[c]
        out = {}
        for v in names:
            scale = 0.0 if v == "none" else 0.1 if v.startswith("weak") else 0.3
            xv = x if scale == 0.0 else x + scale * torch.randn(m, dim, generator=gb)
            out[v] = torch.relu(xv).half().numpy()
        yield out


def make_store(path: str, n: int, dim: int, seed: int) -> float:
    """Write the synthetic store at ``path`` unless one with these parameters is there; returns seconds."""
    from hssal_ray.frozen.store import view_names, write_arrays

    params = {"n": n, "dim": dim, "seed": seed, "views": EMBED_VIEWS, "version": 1}
    meta_path = Path(path) / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("synthetic") == params and meta.get("arrays"):
            return 0.0
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    views = view_names(EMBED_VIEWS)
    meta = {"key": f"synthetic-{n}-{dim}-{seed}", "views": list(views), "rows": n, "complete": True}
    ids = [sample_id(i) for i in range(n)]
    write_arrays(path, ids, _blocks(n, dim, seed), views, meta={**meta, "synthetic": params})
    return time.perf_counter() - t0


def _manifest(n: int, seed: int) -> Any:
    import pyarrow as pa

    from hssal_ray.data.catalog import MANIFEST_SCHEMA

    test = min(n // 5, 10_000)
    split = np.full(n, "train", dtype=object)
    split[np.random.default_rng([seed, 2]).choice(n, test, replace=False)] = "test"
    y = _labels(n, seed)
    return pa.table(
        {
            "sample_id": pa.array([sample_id(i) for i in range(n)], pa.string()),
            "source": pa.array([""] * n, pa.string()),
            "row": pa.array(np.zeros(n, np.int32)),
            "label": pa.array(y),
            "class_name": pa.array([f"class_{c:02d}" for c in y], pa.string()),
            "split": pa.array(split, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )


# ------------------------------------------------------------------------------ one size (child)


def experiment(spec: dict[str, Any]) -> Any:
    """The ``configs/ucm_cpu.yaml`` recipe in this size's run directory (with ``spec["overrides"]``)."""
    from hssal_ray.config import load_config

    over = [
        f"loop.run_dir={spec['run_root']}",
        f"loop.name=n{spec['n']}",
        f"data.root={spec['store']}",
        *BUDGETS,
        *spec.get("overrides", []),
    ]
    return load_config(str(REPO / "configs" / "ucm_cpu.yaml"), over)


def _single_thread() -> tuple[int, int]:
    """torch and faiss on one thread; returns their thread counts before."""
    import torch

    from hssal_ray._faiss import import_faiss

    faiss = import_faiss()

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    return before


def run_size(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the store and run the one-time steps and two rounds in this (fresh) process."""
    import torch

    from hssal_ray._faiss import import_faiss

    faiss = import_faiss()

    threads = _single_thread()
    try:
        return _run_size(spec)
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])


def _run_size(spec: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa

    from hssal_ray.data.catalog import Catalog
    from hssal_ray.frozen.split_cache import run_graph, run_stats
    from hssal_ray.frozen.store import open_store
    from hssal_ray.learners.frozen import stored_rows
    from hssal_ray.loop.cold_start import select_cold_start
    from hssal_ray.loop.context import RunContext
    from hssal_ray.loop.query_batch import run_query
    from hssal_ray.loop.stages.score import prediction_change
    from hssal_ray.state import LabeledSet, round_dir

    n, seed = int(spec["n"]), int(spec["seed"])
    cfg = experiment(spec)
    run_dir = cfg.run_path
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    for old in Path(spec["store"]).glob("graph-*.npz"):
        old.unlink()  # the one-time build is measured, not read back
    steps: dict[str, dict[str, Any]] = {}
    reset_ok = reset_peak_rss()

    def step(name: str, fn: Any) -> Any:
        reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        steps[name] = {
            "cpu_s": round(time.process_time() - c0, 3),
            "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(peak_mb(), 1),
        }
        log.info("n=%d %-14s %s", n, name, steps[name])
        return out

    manifest = _manifest(n, seed)
    ctx = RunContext(cfg, progress=lambda line: log.info("%s", line))
    ctx.load_catalog(  # the synthetic manifest stands in for a scanned archive
        Catalog(
            root=spec["store"],
            table=manifest,
            class_names=tuple(f"class_{c:02d}" for c in range(NUM_CLASSES)),
            kind="files",
        )
    )
    store = step("open_store", lambda: open_store(spec["store"], rows=n))
    ctx.learner.store = store
    # round 0's TypiClust cold start at the profile's 2% (the rounds below start from a random 2%
    # instead, so that every size is labeled alike): the product's select_cold_start on the train split
    n0 = max(1, round(LABELED_FRACTION * ctx.split("train").num_rows))  # the budgets are counts here
    loop0 = dataclasses.replace(cfg.loop, cold_start="typiclust", initial_labeled=n0, total_budget=n0 + 100)
    cold_cfg = dataclasses.replace(cfg, loop=loop0)
    cold = types.SimpleNamespace(cfg=cold_cfg, split=ctx.split, learner=ctx.learner)
    cold_ids = step("cold_start", lambda: select_cold_start(cold))
    train = ctx.split("train")
    rng = np.random.default_rng([seed, 4])
    first = rng.choice(train.num_rows, max(1, round(LABELED_FRACTION * train.num_rows)), replace=False)
    lab = train.take(pa.array(np.sort(first)))
    labeled = LabeledSet().with_round(
        0,
        dict(zip(lab.column("sample_id").to_pylist(), lab.column("label").to_pylist(), strict=True)),
        "benchmark",
    )
    labeled.save(run_dir)
    train_rows = stored_rows(store, train)
    stats = step("stats", lambda: run_stats(cfg, store, train_rows))
    graph = step("graph_build", lambda: run_graph(cfg, store, train_rows, stats))
    truth = dict(
        zip(manifest.column("sample_id").to_pylist(), manifest.column("label").to_pylist(), strict=True)
    )
    info: dict[str, Any] = {}
    for r in (0, 1):
        init = None if r == 0 else os.path.join(round_dir(run_dir, 0), "checkpoint")
        m = step(f"r{r}_train", lambda r=r, init=init: ctx.learner.train(r, init))
        scores = os.path.join(round_dir(run_dir, r), "scores.parquet")
        step(f"r{r}_score", lambda r=r, scores=scores: ctx.learner.score(r, scores))
        moved = {}  # the score stage's stability measure against the round before (loop.stop_kappa)
        if r >= 1:
            moved = step(f"r{r}_stability", lambda r=r: prediction_change(run_dir, r))
        lab_ids = set(LabeledSet.load(run_dir).ids)
        rows = ctx.learner.embedding_source()  # what the query stage passes: the store's rows
        picked = step(
            f"r{r}_query",
            lambda r=r, s=scores, ids=lab_ids, e=rows: run_query(cfg, s, cfg.query.budget, ids, r, e),
        )[0]
        # the same query reading the scores file's embedding column (the path before session 48),
        # measured beside it and not counted in the round: it must pick the same batch
        again = step(
            f"r{r}_query_column",
            lambda r=r, s=scores, ids=lab_ids: run_query(cfg, s, cfg.query.budget, ids, r),
        )[0]
        if again != picked:
            raise RuntimeError(f"round {r}: the store-read and column-read queries picked different batches")
        ev = step(f"r{r}_evaluate", lambda r=r: ctx.learner.evaluate(r))
        labeled = LabeledSet.load(run_dir).with_round(r + 1, {s: truth[s] for s in picked}, "benchmark")
        labeled.save(run_dir)
        info[f"r{r}"] = {
            "picks": len(picked),
            "test_accuracy": ev.get("test_accuracy"),
            "graph_label_acc": m.get("graph_label_acc"),
            "teacher_label_acc": m.get("teacher_label_acc"),
            "graph_pool_rows": m.get("graph_pool_rows"),
            **moved,
        }
    parts = ("train", "score", "stability", "query")
    rnd = {k: sum(steps[f"r1_{s}"][k] for s in parts) for k in ("cpu_s", "wall_s")}
    return {
        "n": n,
        "train_rows": int(train.num_rows),
        "labeled_r0": int(len(first)),
        "cold_start_picks": len(cold_ids),
        "graph_method": graph.method,
        "graph_recall_at_10": round(float(graph.recall), 4),
        "steps": steps,
        "round_cpu_s": round(rnd["cpu_s"], 3),
        "round_wall_s": round(rnd["wall_s"], 2),
        "peak_rss_mb": max(v["peak_rss_mb"] for k, v in steps.items() if not k.endswith("_query_column")),
        "peak_reset_ok": reset_ok,
        "rounds": info,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def run_size_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`run_size` in a fresh single-threaded ``python -m benchmarks.frozen_scale --worker`` process."""
    out = Path(spec["run_root"]) / f"n{spec['n']}.result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", MODULE, "--worker", json.dumps({**spec, "result": str(out)})]
    env = {
        **os.environ,
        **THREAD_ENV,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"size {spec['n']} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------- reporting


def checks(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's targets, where the sizes measured allow them (1M, and 100k for the ratio)."""
    by = {r["n"]: r for r in rows}
    big = by.get(1_000_000)
    if big is None:
        return None
    out: dict[str, Any] = {
        "round_cpu_s_1m": {"value": big["round_cpu_s"], "target": TARGETS["round_cpu_s_1m"]},
        "graph_wall_s_1m": {
            "value": big["steps"]["graph_build"]["wall_s"],
            "target": TARGETS["graph_wall_s_1m"],
        },
        "graph_cpu_s_1m": {
            "value": big["steps"]["graph_build"]["cpu_s"],
            "target": TARGETS["graph_wall_s_1m"],
        },
        "peak_rss_gb_1m": {"value": round(big["peak_rss_mb"] / 1024, 2), "target": TARGETS["peak_rss_gb_1m"]},
    }
    small = by.get(100_000)
    if small is not None and small["round_cpu_s"] > 0:
        ratio = big["round_cpu_s"] / (10 * small["round_cpu_s"])
        out["round_ratio_1m_vs_10x100k"] = {"value": round(ratio, 3), "target": TARGETS["round_ratio"]}
    for v in out.values():
        v["met"] = bool(v["value"] <= v["target"])
    return out


def report(rows: list[dict[str, Any]], payload: dict[str, Any], out_dir: str, name: str) -> None:
    table_rows = []
    for r in rows:
        s = r["steps"]
        table_rows.append(
            {
                "n": r["n"],
                "graph": r["graph_method"],
                "recall@10": r["graph_recall_at_10"],
                "graph build cpu_s": s["graph_build"]["cpu_s"],
                "graph build wall_s": s["graph_build"]["wall_s"],
                "round cpu_s": r["round_cpu_s"],
                "round wall_s": r["round_wall_s"],
                "train cpu_s": s["r1_train"]["cpu_s"],
                "score cpu_s": s["r1_score"]["cpu_s"],
                "stability cpu_s": s["r1_stability"]["cpu_s"],
                "query cpu_s": s["r1_query"]["cpu_s"],
                "peak RSS MB": r["peak_rss_mb"],
            }
        )
    cols = list(table_rows[0]) if table_rows else []
    step_rows = [{"n": r["n"], "step": k, **v} for r in rows for k, v in r["steps"].items()]
    md = [
        f"Synthetic stores of the real shape (d={payload['dim']}, float16, clean + {EMBED_VIEWS} weak + "
        f"{EMBED_VIEWS} strong views, {LABELED_FRACTION:.0%} of the training split labeled), "
        "`configs/ucm_cpu.yaml` recipe, the product's round functions, one thread. "
        "Round = round 1 (warm-started): train + score (+ how its predictions changed since round 0) "
        "+ query.",
        "",
        md_table(table_rows, cols),
        "",
        "## Every step (CPU seconds of the process, wall seconds, peak RSS since the step began)",
        "",
        md_table(step_rows, ["n", "step", "cpu_s", "wall_s", "peak_rss_mb"]),
    ]
    c = payload.get("checks")
    if c:
        md += [
            "",
            "## Checks",
            "",
            md_table([{"check": k, **v} for k, v in c.items()], ["check", "value", "target", "met"]),
        ]
    if payload.get("note"):
        md += ["", payload["note"]]
    write_result(name, payload, "\n".join(md), module=MODULE, out_dir=out_dir)


# ------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument(
        "--work-dir", default=DEFAULT_WORK, help="synthetic stores and run directories (not the repo)"
    )
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep", action="store_true", help="keep the synthetic stores (default: delete each after use)"
    )
    p.add_argument("--smoke", action="store_true", help="one tiny size, few steps (a test runs this)")
    p.add_argument(
        "--note", default="", help="a line added to the result (e.g. what else ran on the machine)"
    )
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per size")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup_logging()
    if args.worker:
        spec = json.loads(args.worker)
        row = run_size(spec)
        Path(spec["result"]).write_text(json.dumps(row))
        return 0
    sizes, dim, over = args.sizes, DIM, []
    if args.smoke:
        sizes, dim = [2000], 32
        over = ["ssl.steps_per_round=10", "query.budget=10"]
    work = Path(args.work_dir)
    rows = []
    for n in sizes:
        store = str(work / f"store-{n}-{dim}")
        gen_s = make_store(store, n, dim, args.seed)
        log.info("n=%d: store ready (%.1f s to write)", n, gen_s)
        spec = {"n": n, "seed": args.seed, "store": store, "run_root": str(work / "runs"), "overrides": over}
        try:  # the smoke run stays in this process (a test calls it); sizes get a fresh one each
            row = run_size(spec) if args.smoke else run_size_subprocess(spec, args.timeout)
        finally:
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
        row["store_write_s"] = round(gen_s, 1)
        rows.append(row)
    payload = {
        "sizes": sizes,
        "dim": dim,
        "rows": rows,
        "checks": checks(rows),
        "targets": TARGETS,
        "note": args.note,
    }
    report(rows, payload, args.out, "frozen_scale_smoke" if args.smoke else "frozen_scale")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
