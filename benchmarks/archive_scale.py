"""Archive scale: catalog scan -> pool scoring -> HAL query over 10k, 100k and 1M generated images.

``python -m benchmarks.archive_scale --sizes 10000 100000 1000000 --out benchmarks/results``

For every size N the benchmark

1. generates (once; reused while the parameters match) an unlabeled archive of N distinct 32x32 RGB
   PNG images in Parquet shards of the layout ``python -m hssal_ray.data.shard`` writes (same schema
   and writer, :func:`hssal_ray.data.shard._write_one`), under ``--work-dir`` (default
   ``/tmp/hssal_archive_scale``, never in the repository). Images are a few hundred seeded smooth
   tiles, rolled, with the image index stamped into pixel (0, 0): PNG is lossless, so every file
   decodes to distinct pixels, and generation runs at ~10k images/s per core;
2. runs the pipeline in a *fresh* Python process (so peak memory is per size) with the loop's own
   code paths: :func:`hssal_ray._ray.ensure_ray`, :func:`hssal_ray.data.catalog.scan`,
   :func:`hssal_ray.scoring.score_pool` (Ray Data decode tasks + an actor pool holding a tiny
   randomly initialised ``hssal_small_cnn`` saved as ``ema.safetensors``, as a round's checkpoint),
   then :func:`hssal_ray.query.load_pool` + ``strategy_from_config(cfg.query)`` (HAL) +
   ``select``, as :func:`hssal_ray.loop.query_stage.run_query` does;
3. measures per stage: wall time (and CPU seconds of the driver and all its Ray processes, which
   depends less on the other jobs of a shared machine), the driver's peak RSS (``VmHWM``, reset
   before each stage through ``/proc/self/clear_refs``), and the RSS of the Ray worker processes
   (``ray::*`` descendants of the driver, sampled from ``/proc`` every 0.5 s; no psutil): the largest
   single worker and the largest sum over workers. The embedding matrix (N x d fp16) that the query
   holds is reported apart, so that memory *excluding* it can be compared across sizes.

Scoring wall includes the per-call start-up (actor start, model load); the same start-up is also
measured alone on a 512-image warm-up call just before, and ``score_marginal_img_s`` leaves it out.

Checks reported (targets from issue 9): driver peak RSS excluding the embedding matrix, 1M / 100k
<= 1.5x; time 1M / 100k / 10 <= ~1.0 (no worse than linear). ``--smoke`` runs one 2,000-image size.
Writes ``<out>/archive_scale.json`` and ``.md`` (``--smoke``: ``archive_scale_smoke.*``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing as mp
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

from benchmarks._common import (
    CpuTracker,
    descendants,
    md_table,
    set_ray_env,
    setup_logging,
    write_result,
)

log = logging.getLogger("benchmarks.archive_scale")

MODULE = "benchmarks.archive_scale"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = "/tmp/hssal_archive_scale"
NUM_CLASSES = 10
N_TILES = 256
MAX_IMAGES = 2**24  # the index is stamped into the 3 bytes of pixel (0, 0)
_PARAMS = ".params.json"  # hidden: scan() ignores names starting with "."


def sample_id(i: int) -> str:
    """The id (= shard ``sample_id``) of generated image ``i``; zero-padded, so sorted ids = index order."""
    return f"img{i:08d}.png"


def class_names() -> list[str]:
    """Class names stored in the shards' metadata (the archive itself is unlabeled: ``label = -1``)."""
    return [f"class_{c:02d}" for c in range(NUM_CLASSES)]


# ------------------------------------------------------------------------------------ generation


def _tiles(seed: int, size: int) -> np.ndarray:
    """``N_TILES`` smooth seeded RGB tiles ``(N_TILES, size, size, 3)`` uint8 (upsampled 8x8 noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (N_TILES, 8, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(c).resize((size, size), Image.Resampling.BILINEAR)) for c in coarse]
    )


def image_array(tiles: np.ndarray, i: int) -> np.ndarray:
    """Pixels of image ``i``: tile ``i % N_TILES`` rolled, index stamped into pixel (0, 0) (distinct)."""
    size = tiles.shape[1]
    k = i // N_TILES
    a = np.roll(tiles[i % N_TILES], (k // size % size, k % size), axis=(0, 1)).copy()
    a[0, 0] = ((i >> 16) & 255, (i >> 8) & 255, i & 255)
    return a


def _encode_png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_GEN: dict[str, Any] = {}


def _gen_init(seed: int, size: int) -> None:
    _GEN["tiles"] = _tiles(seed, size)


def _gen_shard(job: tuple[str, int, int]) -> tuple[int, int]:
    """Write one shard with images ``[start, stop)``; returns (rows, encoded bytes)."""
    from hssal_ray.data.shard import SHARD_SCHEMA, _write_one

    path, start, stop = job
    tiles = _GEN["tiles"]
    blobs = [_encode_png(image_array(tiles, i)) for i in range(start, stop)]
    cols = {
        "sample_id": [sample_id(i) for i in range(start, stop)],
        "image": blobs,
        "label": [-1] * (stop - start),
        "class_name": [None] * (stop - start),
    }
    assert list(cols) == SHARD_SCHEMA.names
    _write_one(path, cols, class_names(), row_group_size=32)  # the shard CLI's default row groups
    return stop - start, sum(map(len, blobs))


def generate_archive(
    n: int,
    work_dir: str | Path,
    *,
    seed: int = 0,
    size: int = 32,
    rows_per_shard: int = 10_000,
    procs: int = 2,
) -> dict[str, Any]:
    """Generate (or reuse) an archive of ``n`` images; returns its path and how it was made.

    The folder holds ``shard-NNNNN.parquet`` files (``hssal_ray.data.shard`` layout) and a hidden
    ``.params.json`` written last: an archive is reused only if that file matches the parameters.
    """
    if not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"n must be in [1, {MAX_IMAGES}], got {n}")
    from hssal_ray.data.shard import _shard_name

    params = {
        "n": n,
        "seed": seed,
        "size": size,
        "rows_per_shard": rows_per_shard,
        "format": "png",
        "version": 1,
    }
    root = Path(work_dir) / f"archive_n{n}_seed{seed}_{size}px_r{rows_per_shard}"
    marker = root / _PARAMS
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        info = json.loads(marker.read_text())
        return {**info, "root": str(root), "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    jobs = [
        (str(root / _shard_name(s)), start, min(start + rows_per_shard, n))
        for s, start in enumerate(range(0, n, rows_per_shard))
    ]
    t0 = time.perf_counter()
    rows = nbytes = 0
    ctx = mp.get_context("spawn")  # the parent may hold threads (logging, Ray): never fork it
    with ctx.Pool(max(1, min(procs, len(jobs))), initializer=_gen_init, initargs=(seed, size)) as pool:
        for r, b in pool.imap_unordered(_gen_shard, jobs):
            rows, nbytes = rows + r, nbytes + b
    secs = time.perf_counter() - t0
    info = {"params": params, "images": rows, "shards": len(jobs), "bytes": nbytes, "seconds": round(secs, 2)}
    marker.write_text(json.dumps(info) + "\n")
    log.info(
        "generated %d images (%.0f MB) in %d shards at %s in %.0f s",
        rows,
        nbytes / 1e6,
        len(jobs),
        root,
        secs,
    )
    return {**info, "root": str(root), "reused": False}


# ------------------------------------------------------------------------------- memory sampling


def _status(pid: int | str) -> dict[str, int]:
    """``Vm*``/``Rss*`` fields (KiB) of ``/proc/<pid>/status``; empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssShmem:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(200).replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``/proc/self/clear_refs``); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def driver_peak_mb() -> float:
    """This process's ``VmHWM`` (peak RSS since start or the last :func:`reset_peak_rss`) in MiB."""
    return _status("self").get("VmHWM", 0) / 1024


class RaySampler:
    """Samples the RSS of this driver's Ray processes every ``interval`` s (background thread).

    Worker processes are the descendants whose command line starts with ``ray::`` (``ray::IDLE``,
    ``ray::MapWorker(...)``, ...); the others (raylet, gcs_server, dashboard, ...) are "daemons".
    Statistics are kept per *stage* (set with :meth:`stage`): the largest single worker RSS, the
    largest sum over workers, and the largest sum over daemons, in MiB; plus every worker's ``VmHWM``.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.current = "start"
        self.stats: dict[str, dict[str, float]] = {}
        self.hwm: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.daemon_peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="ray-rss", daemon=True)

    def start(self) -> RaySampler:
        self._thread.start()
        return self

    def stage(self, name: str) -> None:
        """Attribute the following samples to stage ``name`` (one sample is taken now)."""
        self.sample()
        with self._lock:
            self.current = name
        self.sample()

    def sample(self) -> None:
        workers, daemons, anon = [], 0.0, []
        me = os.getpid()
        for pid in descendants(me):
            st = _status(pid)
            if not st:
                continue
            name = self.names.get(pid) or _cmdline(pid)
            self.names[pid] = name
            rss = st.get("VmRSS", 0) / 1024
            if name.startswith("ray::"):
                workers.append(rss)
                anon.append(st.get("RssAnon", 0) / 1024)
                self.hwm[pid] = max(self.hwm.get(pid, 0.0), st.get("VmHWM", 0) / 1024)
            else:
                daemons += rss
                key = " ".join(os.path.basename(w) for w in name.split()[:3])[:80]
                self.daemon_peaks[key] = max(self.daemon_peaks.get(key, 0.0), rss)
        drv = _status(me)
        with self._lock:
            s = self.stats.setdefault(
                self.current,
                {
                    "worker_max_rss_mb": 0.0,
                    "worker_max_anon_mb": 0.0,
                    "workers_sum_rss_mb": 0.0,
                    "daemons_sum_rss_mb": 0.0,
                    "driver_max_anon_mb": 0.0,
                    "driver_max_shmem_mb": 0.0,
                    "max_workers": 0,
                    "samples": 0,
                },
            )
            s["driver_max_anon_mb"] = max(s["driver_max_anon_mb"], drv.get("RssAnon", 0) / 1024)
            s["driver_max_shmem_mb"] = max(s["driver_max_shmem_mb"], drv.get("RssShmem", 0) / 1024)
            s["worker_max_rss_mb"] = max(s["worker_max_rss_mb"], max(workers, default=0.0))
            s["worker_max_anon_mb"] = max(s["worker_max_anon_mb"], max(anon, default=0.0))
            s["workers_sum_rss_mb"] = max(s["workers_sum_rss_mb"], sum(workers))
            s["daemons_sum_rss_mb"] = max(s["daemons_sum_rss_mb"], daemons)
            s["max_workers"] = max(s["max_workers"], len(workers))
            s["samples"] += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a vanished process must not kill the sampler
                log.debug("sample failed", exc_info=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------ one size (child)


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


def write_checkpoint(cfg: Any, ckpt_dir: str, num_classes: int) -> int:
    """Seeded random-init weights as ``ckpt_dir/ema.safetensors`` (what the scorer loads); returns d."""
    import torch
    from safetensors.torch import save_file

    from hssal_ray.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.ssl.model, num_classes, in_chans=cfg.data.bands, **cfg.ssl.model_kwargs).eval()
    os.makedirs(ckpt_dir, exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        os.path.join(ckpt_dir, "ema.safetensors"),
    )
    return int(model.embed_dim)


def run_size(spec: dict[str, Any]) -> dict[str, Any]:
    """Scan, score and query one archive in this (fresh) process; returns the result row."""
    set_ray_env()
    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.catalog import scan
    from hssal_ray.data.pipeline import collect_bad_samples
    from hssal_ray.query import load_pool, strategy_from_config
    from hssal_ray.rounds import derive_seed
    from hssal_ray.scoring import score_pool

    n, run_dir = int(spec["n"]), spec["run_dir"]
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    cfg = experiment(spec)
    ckpt = os.path.join(run_dir, "checkpoint")
    dim = write_checkpoint(cfg, ckpt, NUM_CLASSES)
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
            "driver_peak_mb": round(driver_peak_mb(), 1),
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

    t = stage("query")
    t_load = time.perf_counter()
    pool = load_pool(scores)  # as hssal_ray.loop.query_stage.run_query (no labeled ids yet)
    load_s = time.perf_counter() - t_load
    strat = strategy_from_config(cfg.query, random_state=derive_seed(cfg.seed, 0, "query") % (2**31))
    budget = min(cfg.query.budget, len(pool.ids))
    t_sel = time.perf_counter()
    picks = np.asarray(strat.select(pool, budget))
    select_s = time.perf_counter() - t_sel
    emb_mb = pool.embeddings.nbytes / 2**20
    q = done(
        "query",
        t,
        load_s=round(load_s, 3),
        select_s=round(select_s, 3),
        picks=int(len(picks)),
        distinct_picks=int(len(np.unique(picks))),
        budget=budget,
    )
    q["driver_peak_excl_emb_mb"] = round(q["driver_peak_mb"] - emb_mb, 1)
    q["coarse_k"] = (getattr(strat, "info_", {}) or {}).get("coarse_k")

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


# ------------------------------------------------------------------------------------- reporting


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    st, rp = row["stages"], row["ray_processes"].get("score", {})
    return {
        "size": row["n"],
        "generate_s": row.get("generate_s"),
        "scan_s": st["scan"]["wall_s"],
        "score_s": st["score"]["wall_s"],
        "img_s": st["score"]["img_s"],
        "marginal_img_s": row.get("score_marginal_img_s"),
        "img_per_cpu_s": st["score"]["img_per_cpu_s"],
        "startup_s": st["warmup"]["wall_s"],
        "query_s": st["query"]["wall_s"],
        "load_pool_s": st["query"]["load_s"],
        "select_s": st["query"]["select_s"],
        "driver_peak_mb": row["driver_peak_mb"],
        "emb_mb": row["emb_mb"],
        "driver_excl_emb_mb": row["driver_peak_excl_emb_mb"],
        "scan_peak_mb": st["scan"]["driver_peak_mb"],
        "score_peak_mb": st["score"]["driver_peak_mb"],
        "query_peak_mb": st["query"]["driver_peak_mb"],
        "worker_max_rss_mb": rp.get("worker_max_rss_mb"),
        "worker_max_anon_mb": rp.get("worker_max_anon_mb"),
        "workers_sum_rss_mb": rp.get("workers_sum_rss_mb"),
        "daemons_sum_rss_mb": rp.get("daemons_sum_rss_mb"),
        "worker_max_hwm_mb": row["worker_max_hwm_mb"],
        "ids_ok": row["ids_ok"],
        "load_1m": f"{row['load_1m_before']} -> {row['load_1m_after']}",
    }


def checks(rows: Sequence[dict[str, Any]], big: int, small: int) -> dict[str, Any] | None:
    """Memory and time ratios of size ``big`` vs ``small`` (None unless both were measured)."""
    by = {r["size"]: r for r in rows}
    if big not in by or small not in by:
        return None
    a, b, f = by[big], by[small], big / small

    def ratio(key: str, scale: float = 1.0) -> float | None:
        if a.get(key) is None or not b.get(key):
            return None
        return round(a[key] / b[key] / scale, 3)

    mem = ratio("driver_excl_emb_mb")
    t_score = ratio("score_s", f)
    out = {
        "sizes": [big, small],
        "driver_peak_excl_emb_ratio": mem,
        "driver_peak_excl_emb_target": 1.5,
        "driver_peak_ratio": ratio("driver_peak_mb"),
        "scan_peak_ratio": ratio("scan_peak_mb"),
        "score_peak_ratio": ratio("score_peak_mb"),
        "worker_max_rss_ratio": ratio("worker_max_rss_mb"),
        "worker_max_anon_ratio": ratio("worker_max_anon_mb"),
        "time_ratio_score": t_score,
        "time_ratio_score_per_cpu_s": (
            round(b["img_per_cpu_s"] / a["img_per_cpu_s"], 3)
            if a.get("img_per_cpu_s") and b.get("img_per_cpu_s")
            else None
        ),
        "time_ratio_score_marginal": (
            round(b["marginal_img_s"] / a["marginal_img_s"], 3)
            if a.get("marginal_img_s") and b.get("marginal_img_s")
            else None
        ),
        "time_ratio_scan": ratio("scan_s", f),
        "time_ratio_query": ratio("query_s", f),
        "time_ratio_pipeline": (
            round(
                (a["scan_s"] + a["score_s"] + a["query_s"]) / (b["scan_s"] + b["score_s"] + b["query_s"]) / f,
                3,
            )
        ),
        "time_target": 1.0,
    }
    out["memory_meets"] = mem is not None and mem <= 1.5
    out["time_meets"] = t_score is not None and t_score <= 1.0
    return out


def _checks_md(c: dict[str, Any]) -> str:
    big, small = c["sizes"]
    verdict = lambda ok: "meets" if ok else "MISSES"  # noqa: E731
    return (
        f"- Memory, driver peak RSS excluding the embedding matrix, {big:,} / {small:,}: "
        f"**{c['driver_peak_excl_emb_ratio']}x** ({verdict(c['memory_meets'])} the <= 1.5x target); "
        f"whole driver peak {c['driver_peak_ratio']}x; per stage: scan {c['scan_peak_ratio']}x, "
        f"score {c['score_peak_ratio']}x; largest Ray worker RSS {c['worker_max_rss_ratio']}x "
        f"(its anonymous memory {c['worker_max_anon_ratio']}x).\n"
        f"- Time, ({big:,} time / {small:,} time) / {big // small}: scoring wall **{c['time_ratio_score']}** "
        f"({verdict(c['time_meets'])} the <= ~1.0 target); "
        f"scoring per CPU-second {c['time_ratio_score_per_cpu_s']}; "
        f"scoring without the per-call start-up {c['time_ratio_score_marginal']}; "
        f"scan {c['time_ratio_scan']}; "
        f"query {c['time_ratio_query']}; scan + score + query {c['time_ratio_pipeline']}.\n"
    )


def report(
    args: argparse.Namespace,
    name: str,
    sizes: list[int],
    budget: int,
    widths: list[int],
    raw: list[dict[str, Any]],
    failures: dict[int, str],
    load_before: list[float],
) -> None:
    """Print the table and write the result files (called after every size: partial results survive)."""
    load_after = [round(x, 2) for x in os.getloadavg()]
    rows = [_flat(r) for r in raw]
    check = checks(rows, 1_000_000, 100_000)
    cols = [
        "size",
        "score_s",
        "img_s",
        "query_s",
        "driver_peak_mb",
        "driver_excl_emb_mb",
        "emb_mb",
        "worker_max_rss_mb",
    ]
    detail_cols = [
        "size",
        "generate_s",
        "scan_s",
        "startup_s",
        "marginal_img_s",
        "img_per_cpu_s",
        "load_pool_s",
        "select_s",
        "scan_peak_mb",
        "score_peak_mb",
        "query_peak_mb",
        "worker_max_anon_mb",
        "workers_sum_rss_mb",
        "daemons_sum_rss_mb",
        "worker_max_hwm_mb",
        "ids_ok",
        "load_1m",
    ]
    table, detail = md_table(rows, cols), md_table(rows, detail_cols)
    print(table)
    lines = [
        "## Scan -> score -> HAL query, per archive size\n",
        table,
        "",
        "Columns: `score_s` wall of `score_pool` over the whole archive (includes the per-call start-up);"
        " `img_s` = size / score_s; `query_s` = `load_pool` + HAL `select`; `driver_peak_mb` the largest"
        " per-stage peak RSS of the driver (scan, score, query); `driver_excl_emb_mb` the same with the"
        " query stage's peak minus the embedding matrix `emb_mb` (size x d x 2 bytes); `worker_max_rss_mb`"
        " the largest RSS of one `ray::` worker process during scoring (sampled every 0.5 s).\n",
        "## Checks\n",
    ]
    lines.append(
        _checks_md(check) if check else "- 1M vs 100k ratios: not measured (both sizes are needed).\n"
    )
    pending = [n for n in sizes if n not in failures and n not in {r["n"] for r in raw}]
    if pending:
        lines.append(
            "- Not yet measured (partial result, written after each size): "
            + ", ".join(f"{n:,}" for n in pending)
            + ".\n"
        )
    if failures:
        lines.append(
            "- Failed sizes: " + ", ".join(f"{n:,}" for n in failures) + " (see `failures` in the JSON).\n"
        )
    lines += ["## Details\n", detail, "", _notes(args, widths, budget, load_before, load_after)]
    if args.out is not None or not args.smoke:
        write_result(
            name,
            {
                "rows": rows,
                "runs": raw,
                "checks": check,
                "failures": failures,
                "pending": pending,
                "settings": {
                    "sizes": sizes,
                    "budget": budget,
                    "widths": widths,
                    "embed_dim": widths[-1],
                    "num_cpus": args.num_cpus,
                    "rows_per_shard": args.rows_per_shard,
                    "seed": args.seed,
                    "image": "32x32 RGB PNG",
                    "work_dir": str(args.work_dir),
                    "score_actors": args.score_actors,
                },
                "load_avg_before": load_before,
                "load_avg_after": load_after,
            },
            "\n".join(lines),
            module=MODULE,
            out_dir=args.out,
        )


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


def _notes(
    args: argparse.Namespace, widths: list[int], budget: int, before: list[float], after: list[float]
) -> str:
    return (
        "## Notes\n\n"
        f"- Host load average (1/5/15 min) before: {before}, after: {after}. The machine is shared: wall"
        " times"
        " include other jobs' load; `img_per_cpu_s` (images per CPU-second of the driver and all its Ray"
        " processes) depends on it much less.\n"
        "- Archive: N distinct 32x32 RGB PNGs (seeded tiles, rolled, index stamped into one pixel),"
        " unlabeled,"
        f" {args.rows_per_shard:,} rows per shard in the `hssal_ray.data.shard` layout, generated under"
        f" `{args.work_dir}` (not committed). Generation time (`generate_s`, {args.gen_procs} processes)"
        " is not"
        " part of the pipeline.\n"
        "- Each size runs in a fresh process with its own local Ray runtime"
        f" (`num_cpus={args.num_cpus}`, 1 GB"
        f" object store, `resources.score_actors={args.score_actors}`), the loop's defaults otherwise:"
        f" decode batch 64, score batch 128; model `hssal_small_cnn` widths {widths} (d = {widths[-1]}),"
        f" random init; HAL with budget {budget}, automatic coarse K, faiss k-means on the driver.\n"
        "- `startup_s`: a 512-image `score_pool` call just before the measured one (actor start, model"
        " load, Ray Data planning); `marginal_img_s` = size / (score_s - startup_s).\n"
        "- Driver peak RSS: `VmHWM` of the driver, reset before every stage (`/proc/self/clear_refs`)."
        " Ray workers: `ray::*` descendants of the driver; their RSS includes object-store pages they"
        " map (shared memory), `worker_max_anon_mb` is the anonymous (private) part only.\n"
        "- `ids_ok`: the scores hold every generated id exactly once (and nothing else).\n"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    raise SystemExit(main())
