"""The ``.md`` file of a GPU check run, rendered from its results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def _table(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(res: dict[str, Any]) -> str:
    """The ``.md`` file: device, then one block per section (settings, figures, or why it is missing)."""
    env = res.get("environment", {})
    lines = ["# GPU check (`python -m benchmarks.gpu_check`)", ""]
    if res.get("toy"):
        lines += [
            "**TOY CPU RUN**: the same code at toy sizes; these numbers measure nothing about a GPU.",
            "",
        ]
    lines += [
        f"- command: `{res.get('command')}`",
        f"- started (UTC): {res.get('started_utc')}, elapsed {res.get('elapsed_s')} s "
        f"of a {res.get('budget_s')} s budget",
        f"- device: {env.get('gpu') or env.get('device')} ({env.get('gpu_memory_gib', '-')} GiB), "
        f"torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, "
        f"Python {env.get('python')}, {env.get('cpus')} CPUs",
        f"- Ray imported: {_fmt(res.get('ray_imported'))}; git commit {env.get('git_commit')}",
    ]
    if res.get("loader_check"):
        lines.append(f"- DataLoader workers: {res['loader_check']}")
    d = res.get("data")
    if d:
        lines.append(
            f"- data: {d['images']} images ({d['classes']} classes) at "
            f"{d['manifest'].get('image_size')} px, train {d['train']} / test {d['test']}; "
            f"{d['labeled']} labels ({d['labeled_fraction']:.0%} of train)"
        )
    for name, sec in res.get("sections", {}).items():
        lines += ["", f"## {name}", ""]
        if sec.get("status") != "ok":
            lines.append(f"**{sec.get('status')}**: {sec.get('reason') or sec.get('error')}")
            continue
        if sec.get("kept_from_run"):
            lines += [f"(kept from the run started {sec['kept_from_run']}: `--keep`)", ""]
        if "settings" in sec:
            lines.append("settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sec["settings"].items()))
            lines.append("")
        if name == "train_throughput":
            lines.append(
                _table(
                    sec["rows"],
                    [
                        "model",
                        "case",
                        "status",
                        "amp",
                        "channels_last",
                        "img_s",
                        "step_ms",
                        "first_step_s",
                        "peak_gpu_mem_gib",
                        "loss_first",
                        "loss_last",
                        "loss_went_down",
                    ],
                )
            )
        elif name == "kmeans":
            flat = []
            for r in sec["rows"]:
                for where in ("device", "host_to_device", "cpu"):
                    if where in r:
                        flat.append(
                            {
                                "n": r["n"],
                                "d": r["d"],
                                "status": r["status"],
                                **r[where],
                                "hal_select_s": r.get("hal_select_s") if where == "device" else None,
                                "assign_pass_s": r.get("assign_pass_s") if where == "device" else None,
                            }
                        )
                if r["status"] != "ok":
                    flat.append({"n": r["n"], "d": r["d"], "status": f"{r['status']}: {r.get('error')}"})
            lines.append(
                _table(
                    flat,
                    [
                        "n",
                        "d",
                        "status",
                        "where",
                        "fit_s",
                        "n_iter",
                        "s_per_pass",
                        "peak_gpu_mem_gib_over_data",
                        "assign_pass_s",
                        "hal_select_s",
                    ],
                )
            )
            lines += [
                "",
                f"cupy hand-off: {json.dumps(sec.get('cupy_handoff'), default=str)}; "
                f"cuML installed: {_fmt(sec.get('cuml_installed'))}",
            ]
        elif name == "finetune":
            keys = [
                "steps_run",
                "stopped_early",
                "train_wall_s",
                "images_per_s",
                "data_wait_s",
                "step_s",
                "peak_gpu_mem_gib",
                "test_accuracy",
                "test_accuracy_other",
                "frozen_head_test_accuracy",
                "finetune_minus_frozen_points",
                "loss_went_down",
            ]
            lines.append(_table([sec], keys))
            lines += ["", _table(sec["loss_curve"], ["steps", "loss", "sup_loss", "unsup_loss", "mask_rate"])]
        else:
            flat = {
                k: v
                for k, v in sec.items()
                if k not in ("settings", "status", "metrics", "columns") and not isinstance(v, list | dict)
            }
            lines.append(_table([flat], list(flat)))
            if isinstance(sec.get("shard_search"), dict):  # knn: the sharded path's search
                lines += ["", "sharded graph search (`resources.use_gpu` with `store_shards`):", ""]
                lines.append(_table([sec["shard_search"]], list(sec["shard_search"])))
    return "\n".join(lines) + "\n"
