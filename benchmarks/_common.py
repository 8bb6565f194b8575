"""Helpers shared by the benchmarks: machine description, peak RSS, result files, logging.

Every result file carries the command that produced it, the machine it ran on (CPU model, cores,
memory, load average at the start: these machines are shared), library versions, the git commit
and a UTC timestamp. Numbers are only ever compared as ratios measured in the same run.

Importing this module is cheap and needs neither Ray nor a GPU (the GPU part of
``benchmarks.train_throughput`` runs on machines without Ray).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "RAY_ENV",
    "command_line",
    "describe_machine",
    "md_table",
    "set_ray_env",
    "setup_logging",
    "start_local_ray",
    "summarize",
    "timed_process",
    "sweep_round_means",
    "write_initial_checkpoint",
    "write_result",
]

log = logging.getLogger("benchmarks")

#: A trial's run directory name in a benchmark's Tune sweep (``hssal_ray.tune._space.trial_name``).
TRIAL_NAME = re.compile(r"strategy=(?P<strategy>[^-]+)-seed=(?P<seed>\d+)")


def sweep_round_means(
    sweeps: Iterable[Path], per_run: Callable[[Path], list[dict[str, float]]], needs: str
) -> dict[str, dict[int, dict[str, float]]]:
    """``{strategy: {round: {figure: mean over seeds}}}`` of ``per_run(run_dir)`` over the trials
    of benchmark sweeps (run directories named ``strategy=<s>-seed=<n>_...`` that hold ``needs``).

    ``per_run`` returns one dict of figures per round, each with its ``round``.
    """
    import numpy as np

    acc: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for sweep in sweeps:
        for run in sorted(p for p in Path(sweep).iterdir() if p.is_dir()):
            m = TRIAL_NAME.search(run.name)
            if not m or not (run / needs).exists():
                continue
            for d in per_run(run):
                for k, v in d.items():
                    if k != "round":
                        acc[m["strategy"]][int(d["round"])][k].append(v)
    return {
        s: {r: {k: float(np.mean(v)) for k, v in ks.items()} for r, ks in sorted(rs.items())}
        for s, rs in acc.items()
    }


REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

#: Environment a local Ray runtime needs here (ENV.md): token auth, no uv runtime env, no telemetry.
RAY_ENV = {
    "RAY_AUTH_MODE": "token",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


def set_ray_env() -> None:
    """Set :data:`RAY_ENV` defaults in ``os.environ`` (before ``ray.init``; user values win)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)


def start_local_ray(num_cpus: int, object_store_memory: int = 1_000_000_000) -> float:
    """Start a *new* local Ray runtime with ``num_cpus`` logical CPUs; return the seconds ``ray.init`` took.

    The runtime :func:`hssal_ray._ray.ensure_ray` starts (:func:`hssal_ray._ray.init_private_ray`:
    ``address="local"``, never another user's ``ray start`` cluster; dashboard on 127.0.0.1, which
    Ray Train's controller polls; no well-known port). A runtime that is already initialised in
    this process is reused (0.0 s).
    """
    set_ray_env()
    import ray

    from hssal_ray._ray import init_private_ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    init_private_ray(
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        include_dashboard=True,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return time.perf_counter() - t0


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps (INFO, or DEBUG when ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, e.g. ``.venv/bin/python -m benchmarks.ingest --quick``."""
    args = list(sys.argv[1:] if argv is None else argv)
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    return " ".join([shlex.quote(exe), "-m", module, *map(shlex.quote, args)])


def write_initial_checkpoint(cfg: Any, ckpt_dir: str, num_classes: int) -> int:
    """A round checkpoint of the seeded random-init model in ``ckpt_dir`` (what the scorer loads); returns d.

    Built and written by the training code itself (:func:`~hssal_ray.ssl.train_loop.build_train_state`,
    ``write_checkpoint``): the same files a trained round leaves, at step 0.
    """
    import torch

    from hssal_ray.rounds import write_checkpoint
    from hssal_ray.ssl.train_loop import build_train_state

    torch.manual_seed(cfg.seed)
    state = build_train_state(cfg, num_classes, torch.device("cpu"), total_steps=1)
    write_checkpoint(state, ckpt_dir, {"step": 0, "global_step": 0, "round": 0, "metrics": {}})
    return int(state.model.embed_dim)


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a ``/proc`` file (None: no such line or file)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


#: CPU flags that choose which kernels torch, oneDNN and MKL run (and so a result's last bits)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")


def _cpu_isa() -> list[str]:
    """The :data:`ISA_FLAGS` this CPU reports (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    from hssal_ray._faiss import cpu_flags

    have = cpu_flags()
    return [x for x in ISA_FLAGS if x in have]


def _cpu_capability() -> str | None:
    """torch's CPU kernel level (``DEFAULT``, ``AVX2``, ``AVX512``; ``ATEN_CPU_CAPABILITY`` lowers it)."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - no torch, or a torch without the call
        return None


def _faiss_blas() -> dict[str, str | None]:
    """faiss's bundled OpenBLAS kernels: its own choice and those the product loads (``hssal_ray._faiss``)."""
    try:
        from hssal_ray._faiss import describe

        return describe()
    except Exception:  # noqa: BLE001 - provenance only
        return {"library": None, "used": None}


def _mem_total_gib() -> float | None:
    total = _proc_field("/proc/meminfo", "MemTotal:")  # "24599748 kB"
    return round(int(total.split()[0]) / 1024**2, 1) if total else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        try:
            mod = __import__(module)
        except Exception:  # noqa: BLE001 - a missing optional library is just "not installed"
            return None
    return str(getattr(mod, "__version__", "unknown"))


def describe_machine(*, gpu: bool = False) -> dict[str, Any]:
    """Where a benchmark ran: host, CPU, usable cores, memory, load, versions (and the GPU if ``gpu``)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    desc: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "cpu_capability": _cpu_capability(),
        "faiss_blas": _faiss_blas(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "mem_total_gib": _mem_total_gib(),
        "load_avg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "git_commit": _git_commit(),
        "gpu": None,
    }
    if gpu:
        try:
            import torch

            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(0)
                desc["gpu"] = f"{p.name}, {p.total_memory / 1024**3:.0f} GiB, CUDA {torch.version.cuda}"
        except Exception as e:  # noqa: BLE001
            desc["gpu"] = f"unavailable ({type(e).__name__})"
    desc["summary"] = (
        f"{desc['cpu']}"
        + (f" ({desc['cpu_capability']} kernels)" if desc["cpu_capability"] else "")
        + (f", faiss BLAS {desc['faiss_blas']['used']}" if desc["faiss_blas"]["used"] else "")
        + f", {usable} usable CPUs, {desc['mem_total_gib']} GiB RAM"
        + (f", GPU {desc['gpu']}" if desc["gpu"] else ", no GPU")
        + f"; Python {desc['python']}, torch {desc['torch']}, Ray {desc['ray']}"
    )
    return desc


_WRAP = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def timed_process(cmd: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one process (run under a wrapper of its own, so that the
    peak is that process's, not the largest of every child the benchmark has waited for)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mb": int(r.stdout.split()[-1]) / 1024}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a non-empty sequence (for per-pass rates)."""
    vals = list(values)
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"
    if v is None:
        return "-"
    return str(v)


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns`` (missing cells print as ``-``)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def query_rounds(run: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """``(round, scores.parquet path, recorded batch ids)`` of every query round a run directory holds
    (both ``round_XXX/scores.parquet`` and ``round_XXX/query.csv``), in round order."""
    from hssal_ray import _csv

    for rd in sorted(run.glob("round_[0-9][0-9][0-9]")):
        qf, sf = rd / "query.csv", rd / "scores.parquet"
        if qf.exists() and sf.exists():
            yield (
                int(rd.name.split("_")[1]),
                sf,
                [row["sample_id"] for row in _csv.read_dicts(qf.read_text())],
            )


def emit_report(out: str | None, payload: Any, text: str) -> None:
    """Print ``text``; with ``out``, also write ``OUT.json`` (``payload``) and ``OUT.md`` (``text``)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(payload, indent=2) + "\n")
        Path(out + ".md").write_text(text)
    print(text)


def write_result(
    name: str,
    payload: Mapping[str, Any],
    markdown: str,
    *,
    module: str,
    out_dir: str | Path | None = None,
    gpu: bool = False,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``.md``, stamped with device, command and date.

    Args:
        name: Result name (``ingest``, ``train_throughput``).
        payload: The measured data (``rows``, ``ratio``, ...); ``device``, ``command``, ``date`` are added.
        markdown: Body of the ``.md`` file (tables, notes); a header with the stamp is prepended.
        module: The benchmark's module (for the reproducing command).
        out_dir: Target folder (default ``benchmarks/results``).
        gpu: Describe the GPU too.

    Returns:
        The JSON and Markdown paths.
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    device = describe_machine(gpu=gpu)
    stamp = {
        "device": device,
        "command": command_line(module),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    data = {**payload, **stamp}
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jtmp, mtmp = jpath.with_suffix(".json.tmp"), mpath.with_suffix(".md.tmp")
    jtmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    header = (
        f"# Benchmark: {name}\n\n"
        f"- command: `{stamp['command']}`\n"
        f"- date (UTC): {stamp['date']}\n"
        f"- device: {device['summary']}\n"
        f"- host load average at start (1/5/15 min): {device['load_avg_1_5_15_at_start']}"
        " (shared machine: compare only the ratios measured in this run)\n"
        f"- git commit: {device['git_commit']}\n\n"
    )
    mtmp.write_text(header + markdown.rstrip() + "\n")
    os.replace(jtmp, jpath)
    os.replace(mtmp, mpath)
    log.info("wrote %s and %s", jpath, mpath)
    return jpath, mpath
