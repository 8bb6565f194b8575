"""Tables, checks and result files of :mod:`benchmarks.archive_scale`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from benchmarks._common import md_table, write_result

MODULE = "benchmarks.archive_scale"


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
