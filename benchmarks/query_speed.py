"""Query speed: HAL vs flat k-means (TypiClust, k = budget) vs k-center greedy, plus the CLI.

``python -m benchmarks.query_speed`` runs the standard set: n in {10k, 100k, 1M}, d = 512,
embeddings from 200 Gaussian clusters of unequal sizes (L2-normalised, stored fp16, held in memory),
a per-cluster uncertainty level, budget 1000. Every (n, strategy) runs in a fresh subprocess that
loads the pool, warms up on a tiny pool, resets its peak RSS (``/proc/self/clear_refs``) and then
times ``select``; ``peak_rss_mb`` is the peak resident memory above the loaded pool. Also: the whole
CLI call on a 1M-row scores Parquet file, and a sweep of HAL's coarse K1 and k-means backend on the
1M pool (time, true-cluster coverage, mean uncertainty of the batch).

Timing is single-threaded process CPU time (robust to other jobs on a shared machine), with the
wall time alongside. Where a baseline is too slow to run to the end on 1M it is *extrapolated* from
two measured runs (flat k-means: 1 and 2 Lloyd iterations -> 20; k-center greedy: budgets 30 and 90
-> 1000, both linear in that knob), and the row says so (``measured: "extrapolated"``).
``--quick`` runs a small set; ``--cli-only`` only the 1M CLI call (``query_speed_cli.{json,md}``: its
wall time, on an otherwise idle machine). Writes ``benchmarks/results/query_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import emit_report
from benchmarks._sampler import peak_mb, proc_status, reset_peak_rss

RESULTS = Path(__file__).resolve().parent / "results"
N_CLUSTERS = 200


def make_data(n: int, d: int, seed: int, out: Path) -> dict[str, str]:
    """Clustered synthetic pool: writes emb.npy (n, d) fp16, u.npy, lab.npy, conf.npy into ``out``."""
    rng = np.random.default_rng(seed)
    weights = np.geomspace(1.0, 20.0, N_CLUSTERS)
    lab = rng.choice(N_CLUSTERS, size=n, p=weights / weights.sum()).astype(np.int32)
    centers = rng.standard_normal((N_CLUSTERS, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    level = rng.uniform(0.1, 0.9, N_CLUSTERS).astype(np.float32)  # how unsure the model is per cluster
    emb = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 100_000):
        x = centers[lab[s : s + 100_000]] + rng.standard_normal(
            (len(lab[s : s + 100_000]), d), np.float32
        ) * (0.7 / np.sqrt(d))
        emb[s : s + 100_000] = x / np.linalg.norm(x, axis=1, keepdims=True)
    u = np.clip(level[lab] + 0.1 * rng.standard_normal(n).astype(np.float32), 0.0, None).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out / f"{k}.npy") for k in ("emb", "u", "lab", "conf")}
    np.save(paths["emb"], emb)
    np.save(paths["u"], u)
    np.save(paths["lab"], lab)
    np.save(paths["conf"], u < 0.2)
    return paths


#: with ``late``: labeled rows per class, past the profile's ``typical_until`` (3.5), so that ``pick: auto``
#: picks uncertain and ``late_candidate_ratio`` acts (an archive's later rounds)
LATE_LABELS_PER_CLASS = 5


def _pool(paths: dict[str, str], n_rows: int | None = None, late: int = 0) -> tuple[Any, np.ndarray]:
    """The synthetic pool; ``late`` > 0: with seeded class probabilities of ``late`` classes and
    ``LATE_LABELS_PER_CLASS * late`` labeled rows (``exclude``), a round past ``pick: auto``'s switch."""
    from hssal_ray.query import Pool

    emb = np.load(paths["emb"])
    u, lab, conf = (np.load(paths[k]) for k in ("u", "lab", "conf"))
    if n_rows is not None:
        emb, u, lab, conf = emb[:n_rows].copy(), u[:n_rows], lab[:n_rows], conf[:n_rows]
    ids = np.char.add("s", np.arange(len(u)).astype(str)).astype(object)
    probs = exclude = None
    if late:
        rng = np.random.default_rng(1)
        probs = rng.dirichlet(np.ones(late), size=len(u)).astype(np.float32)
        exclude = np.zeros(len(u), dtype=bool)
        exclude[rng.choice(len(u), LATE_LABELS_PER_CLASS * late, replace=False)] = True
    pool = Pool(ids=ids, embeddings=emb, probs=probs, scores={"u_badge": u}, confident=conf, exclude=exclude)
    return pool, lab


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; returns the result row."""
    import torch

    from hssal_ray.query import strategy_from_config

    if spec.get("threads"):
        from hssal_ray._faiss import import_faiss

        faiss = import_faiss()

        torch.set_num_threads(int(spec["threads"]))
        faiss.omp_set_num_threads(int(spec["threads"]))
    cfg = argparse.Namespace(strategy=spec["strategy"], **spec.get("params", {}))
    late = int(spec.get("late", 0))
    tiny, _ = _pool(spec["paths"], 3000, late)
    strategy_from_config(cfg, random_state=0).select(tiny, min(spec["budget"], 50))  # imports, thread pools
    pool, lab = _pool(spec["paths"], late=late)
    strategy = strategy_from_config(cfg, random_state=0)
    rss0 = proc_status("self").get("VmRSS", 0) / 1024
    if reset_peak_rss():  # the peak RSS is now the current RSS
        peak_note = "peak RSS above the loaded pool (VmHWM reset before select)"
    else:
        peak_note = "peak RSS of the whole process minus RSS before select (could not reset VmHWM)"
    load0 = os.getloadavg()[0]
    times, cpus = [], []
    for _ in range(int(spec.get("repeats", 1))):  # the median resists bursts of load from other jobs
        t0, c0 = time.perf_counter(), time.process_time()
        picks = strategy.select(pool, spec["budget"])
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    wall, cpu = float(np.median(times)), float(np.median(cpus))
    peak = max(peak_mb() - rss0, 0.0)
    u = pool.scores["u_badge"]
    info = getattr(strategy, "info_", {})
    return {
        "n": len(pool),
        "strategy": spec["strategy"],
        "seconds": round(cpu, 3),
        "peak_rss_mb": round(peak, 1),
        "wall_seconds": round(wall, 3),
        "threads": torch.get_num_threads(),
        "emb_mb": round(pool.embeddings.nbytes / 2**20, 1),
        "peak_over_emb": round(peak / (pool.embeddings.nbytes / 2**20), 3),
        "coverage": int(len(np.unique(lab[picks]))),
        "mean_u": round(float(u[picks].mean()), 4),
        "budget": spec["budget"],
        "params": spec.get("params", {}),
        "measured": "measured",
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "breakdown_s": {k: round(v, 3) for k, v in info.get("seconds", {}).items()},
        "all_seconds": [round(t, 3) for t in cpus],
        "all_wall_seconds": [round(t, 3) for t in times],
        "coarse_k": info.get("coarse_k"),
        "pick": info.get("pick"),
        "boundary": info.get("boundary"),
        "backend": info.get("backend"),
        "peak_note": peak_note,
    }


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def run_worker(spec: dict[str, Any], timeout: int = 1800) -> dict[str, Any]:
    """Run :func:`worker` in a fresh Python process."""
    spec = {"threads": 1, **spec}
    cmd = [sys.executable, "-m", "benchmarks.query_speed", "--worker", json.dumps(spec)]
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
        env=_thread_env(spec["threads"]),
    )
    if r.returncode != 0:
        raise RuntimeError(f"worker failed: {spec['strategy']} n={spec.get('n')}\n{r.stderr[-3000:]}")
    row = json.loads(r.stdout.strip().splitlines()[-1])
    print(
        f"  {row['strategy']:<10} n={row['n']:>8} cpu {row['seconds']:>8.3f} s "
        f"wall {row['wall_seconds']:>8.3f} s "
        f"peak +{row['peak_rss_mb']:>7.1f} MB "
        f"cov={row['coverage']:>3} u={row['mean_u']:.3f} {row['params'] or ''}",
        flush=True,
    )
    return row


def extrapolate(rows: list[dict[str, Any]], knob: str, values: list[float], target: float) -> dict[str, Any]:
    """Linear fit ``seconds = a + b * knob`` through two measured rows, evaluated at ``target``."""
    (x0, x1), (y0, y1) = values, (rows[0]["seconds"], rows[1]["seconds"])
    b = (y1 - y0) / (x1 - x0)
    row = dict(rows[1])
    row.update(
        seconds=round(y0 + b * (target - x0), 3),
        wall_seconds=None,
        measured="extrapolated",
        note=f"extrapolated linearly in {knob} from measured {knob}={x0:g} ({y0:.2f} s) and "
        f"{knob}={x1:g} ({y1:.2f} s) to {knob}={target:g}; peak RSS, coverage and mean_u are from "
        f"the {knob}={x1:g} run",
    )
    return row


def run_cli(scores: Path, budget: int, tmp: Path) -> dict[str, Any]:
    """Time the whole CLI call (process start, imports, read, select, CSV write) on a scores file."""
    cmd = [
        sys.executable,
        "-m",
        "hssal_ray.query",
        str(scores),
        "--strategy",
        "hal",
        "--budget",
        str(budget),
        "--out",
        str(tmp / "query.csv"),
    ]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env=_thread_env(1),
    )
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read() if p.stderr else ""
    if status != 0:
        raise RuntimeError(f"CLI failed: {err}")
    return {
        "n": None,
        "strategy": "cli:hal",
        "seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "wall_seconds": round(wall, 3),
        "threads": 1,
        "measured": "measured",
        "stderr": err.strip().splitlines()[-1],
        "note": "whole `python -m hssal_ray.query` call (start, imports, read, select, CSV), "
        "single-threaded; "
        "seconds = its user+system CPU time; peak_rss_mb = the process's total peak RSS (includes the "
        "loaded pool and Python/torch)",
    }


def cli_row(paths: dict[str, str], n: int, budget: int, tmp: Path, packed: bool = False) -> dict[str, Any]:
    """Write the pool at ``paths`` as a scores Parquet file and time the whole CLI call on it.

    ``packed``: the embedding column as the frozen path writes it (one ``fixed_size_binary`` a row)
    instead of a Parquet list (what Ray Data's image-level scoring and most hand-made files hold).
    """
    from hssal_ray.query.scores_io import write_scores

    print(f"CLI on a {n}-row scores Parquet file", flush=True)
    pool, _ = _pool(paths)
    t0 = time.perf_counter()
    write_scores(
        str(tmp / "scores.parquet"),
        pool.ids,
        pool.embeddings,
        scores=pool.scores,
        confident=pool.confident,
        pack_embeddings=packed,
    )
    print(f"  scores file written in {time.perf_counter() - t0:.1f} s", flush=True)
    emb_mb = pool.embeddings.nbytes / 2**20
    del pool
    load = os.getloadavg()[0]
    cli = run_cli(tmp / "scores.parquet", budget, tmp)
    cli.update(n=n, emb_mb=round(emb_mb, 1), peak_over_emb=round(cli["peak_rss_mb"] / emb_mb, 3))
    cli["loadavg_1m_before"] = round(load, 2)
    cli["embedding_column"] = "packed" if packed else "list"
    print(f"  cli cpu {cli['seconds']:.2f} s wall {cli['wall_seconds']:.2f} s: {cli['stderr']}", flush=True)
    return cli


def cli_only(out: Path) -> int:
    """``--cli-only``: the 1M CLI row alone (its wall time wants an otherwise idle machine)."""
    n, budget, d = 1_000_000, 1000, 512
    with tempfile.TemporaryDirectory(prefix="query_speed_cli_") as tmpd:
        tmp = Path(tmpd)
        print(f"n = {n}: generating data", flush=True)
        paths = make_data(n, d, seed=0, out=tmp / f"n{n}")
        rows = [cli_row(paths, n, budget, tmp, packed=p) for p in (False, True)]
    res = {
        "rows": rows,
        "device": _device(),
        "command": "python -m benchmarks.query_speed --cli-only",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget": budget,
        "dim": d,
        "clusters": N_CLUSTERS,
    }
    md = [
        f"# Query CLI on a 1M-row scores file ({res['device']})",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}",
        "",
        f"The same pool and call as the standard set's `cli:hal` row (d={d} fp16, {N_CLUSTERS} clusters, "
        f"budget {budget}, `python -m hssal_ray.query SCORES --strategy hal --budget {budget} --out "
        "query.csv`, single-threaded), once per embedding format, run alone so that its wall time means "
        "something; the 1-minute load average just before the call says how idle the machine was.",
        "",
        "| n | embedding column | CPU s (user+sys) | wall s | peak RSS (MB) | peak / embedding matrix "
        "| load avg before |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {r['embedding_column']} | {r['seconds']:.2f} | {r['wall_seconds']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_over_emb']} | {r['loadavg_1m_before']} |"
            for r in rows
        ),
        "",
        "`list`: a Parquet list of float16 per row (the standard set's file; Ray Data's image-level scoring "
        "writes it); `packed`: one fixed_size_binary value per row, as the frozen path writes it. The CLI's "
        "own summaries:",
        "",
        *(f"- {r['embedding_column']}: `{r['stderr']}`" for r in rows),
        "",
    ]
    emit_report(str(out / "query_speed_cli"), res, "\n".join(md))
    return 0


def _device() -> str:
    import torch

    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    threads = torch.get_num_threads()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), CPU only"


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# Query speed ({res['device']})",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}",
        "",
        "| n | strategy | seconds (CPU, 1 thread) | wall s (under load) | peak RSS (MB) | peak / embedding "
        "matrix | coverage (of 200) | mean u | how |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        wall = "" if r.get("wall_seconds") is None else f"{r['wall_seconds']:.2f}"
        lines.append(
            f"| {r['n'] or ''} | {r['strategy']} | {r['seconds']:.2f} | {wall} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('peak_over_emb') or ''} | {r.get('coverage', '')} | {r.get('mean_u', '')} | "
            f"{r['measured']} |"
        )
    lines += [
        "",
        "| n | typiclust / hal time | coreset / hal time | hal peak / embedding matrix |",
        "|---:|---:|---:|---:|",
    ]
    for n, rt in res["ratios"].items():
        lines.append(
            f"| {n} | {rt['typiclust_over_hal']} | {rt['coreset_over_hal']} | {rt['hal_peak_over_emb']} |"
        )
    if res.get("sweep"):
        lines += [
            "",
            f"HAL variants on n = {res['sweep'][0]['n']} (budget {res['sweep'][0]['budget']}):",
            "",
            "| params | coarse K1 | seconds (CPU) | wall s | fit / assign / fine (wall s) | peak RSS (MB) "
            "| coverage | mean u |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for r in res["sweep"]:
            b = r["breakdown_s"]
            lines.append(
                f"| {r['strategy']} {r['params']} | {r['coarse_k'] or ''} | {r['seconds']:.2f} | "
                f"{r['wall_seconds']:.2f} | "
                f"{b.get('coarse_fit', '')} / {b.get('assign', '')} / {b.get('fine', '')} | "
                f"{r['peak_rss_mb']:.0f} | {r['coverage']} | {r['mean_u']} |"
            )
    lines += ["", "Notes:", *[f"- {x}" for x in res["notes"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n in {10k, 50k}, budget 100, no 1M extras")
    ap.add_argument(
        "--cli-only",
        action="store_true",
        help="only the 1M CLI call (query_speed_cli.*)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.cli_only:
        return cli_only(Path(args.out_dir))
    sizes, budget, d = (
        ([10_000, 50_000], 100, 512) if args.quick else ([10_000, 100_000, 1_000_000], 1000, 512)
    )
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    notes = [
        "seconds = process CPU time of `strategy.select(pool, budget)`, run single-threaded (torch, faiss, "
        "OMP/MKL/OpenBLAS = 1 thread) in a fresh process after a warm-up on a tiny pool; HAL: median of 3 "
        "runs. This 2-core machine was shared with other jobs under heavy load (loadavg_1m 5-30, see the "
        "rows), which makes wall-clock times meaningless; single-threaded CPU time is robust to that and "
        "is what one idle core takes, an upper bound for an idle 2-core run. wall_seconds = the measured "
        "wall time under that load.",
        "The pool (fp16 embeddings, u_badge, confident) is in memory before timing. peak RSS = peak "
        "resident memory above the loaded pool during select (VmHWM reset via /proc/self/clear_refs).",
        "typiclust = flat k-means with k = budget on all embeddings (same k-means backend as HAL, auto = "
        "faiss, 20 Lloyd iterations, k-means++ seeding) + the most typical row per cluster.",
        "coverage = distinct true clusters (of 200) in the batch; mean u = mean uncertainty of the batch.",
        "Stage breakdowns (breakdown_s) are wall-clock and affected by the load. The `threads: 2` HAL row "
        "runs torch/faiss with their default 2 OpenMP threads: on this oversubscribed machine the threads "
        "spin-wait for each other, so its CPU and wall times show the contention, not HAL's cost.",
    ]
    with tempfile.TemporaryDirectory(prefix="query_speed_") as tmpd:
        tmp = Path(tmpd)
        paths: dict[str, str] = {}
        for n in sizes:
            print(f"n = {n}: generating data", flush=True)
            paths = make_data(n, d, seed=0, out=tmp / f"n{n}")
            base = {"paths": paths, "budget": budget, "n": n}
            rows.append(run_worker({**base, "strategy": "hal", "repeats": 3}))
            if n < 1_000_000:
                rows.append(run_worker({**base, "strategy": "typiclust"}))
                rows.append(run_worker({**base, "strategy": "coreset"}))
                continue
            tc = [
                run_worker({**base, "strategy": "typiclust", "params": {"kmeans_iters": i}}) for i in (1, 2)
            ]
            rows.append(extrapolate(tc, "kmeans_iters", [1, 2], 20))
            cs = [run_worker({**base, "strategy": "coreset", "budget": b}) for b in (30, 90)]
            rows.append(extrapolate(cs, "budget", [30, 90], budget))
            for params in (
                {"coarse_k": 16},
                {"coarse_k": 32},
                {"coarse_k": 128},
                {"kmeans_backend": "torch"},
                {"fine_method": "spectral"},
                {"pick": "typical"},
            ):
                sweep.append(run_worker({**base, "strategy": "hal", "params": params, "repeats": 3}))
            sweep.insert(0, next(r for r in rows if r["strategy"] == "hal" and r["n"] == n))
            two = run_worker({**base, "strategy": "hal", "repeats": 3, "threads": 2})
            sweep.append({**two, "params": {"threads": 2}})
            sweep.append(run_worker({**base, "strategy": "random"}))
            sweep.append(run_worker({**base, "strategy": "hal_flat"}))
        rows.append(cli_row(paths, sizes[-1], budget, tmp))
    ratios = {}
    for n in sizes:
        by = {r["strategy"]: r for r in rows if r["n"] == n}
        h = by["hal"]["seconds"]
        ratios[str(n)] = {
            "typiclust_over_hal": round(by["typiclust"]["seconds"] / h, 1),
            "coreset_over_hal": round(by["coreset"]["seconds"] / h, 1),
            "hal_peak_over_emb": by["hal"]["peak_over_emb"],
        }
    res = {
        "rows": rows,
        "ratios": ratios,
        "sweep": sweep,
        "notes": notes,
        "device": _device(),
        "command": "python -m benchmarks.query_speed" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budget": budget,
        "dim": d,
        "clusters": N_CLUSTERS,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "query_speed_quick" if args.quick else "query_speed"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{stem}.md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
