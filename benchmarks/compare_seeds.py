"""Two measurements of the same methods, seed by seed: which accuracies match, and how far the rest moved.

    python -m benchmarks.compare_seeds --name "UCM validation, baselines: this machine vs stored" \\
        --a benchmarks/results/hal_val11/le_val_ucm_b11.json:ssl_entropy,ssl_margin \\
        --b benchmarks/results/hal_val5/le_val_ucm_base5.json:ssl_entropy,ssl_margin ... [--out PATH]

Each side is one or more ``RESULT.json:method[,method...]`` specs, merged as ``benchmarks.seed_pool``
merges them (a seed measured twice on one side must agree). For every method and seed both sides
hold it compares the accuracies after the cold start (full supervision: its one budget): cells
identical (bit for bit), the largest difference, and the mean difference ``a - b`` at each budget.
Runs nothing. It answers "does the product give the same numbers on another machine / cache /
commit?" from results already written, and lists what each side's results record of where they ran:
the embedding store's content fingerprint (``benchmarks.label_efficiency`` writes it since session 48:
equal fingerprints mean the same embeddings bit for bit), the CPU, torch's kernel level and ISA
flags, and the commit, so that a moved cell can be put down to the machine, the store or the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, emit_report, md_table
from benchmarks.seed_pool import pool_summaries

__all__ = ["compare", "provenance", "same_store", "report", "main"]


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method both summaries hold: ``seeds``, ``cells``, ``identical``, ``max_diff`` (points) and
    ``mean_diff`` (points, a - b, one per budget after the cold start) over their common seeds.

    Raises:
        ValueError: the two sides' budgets differ for a method.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in sorted(set(a) & set(b)):
        if list(a[m]["num_labeled"]) != list(b[m]["num_labeled"]):
            raise ValueError(f"{m}: budgets differ ({a[m]['num_labeled']} vs {b[m]['num_labeled']})")
        seeds = sorted(set(a[m]["per_seed"]) & set(b[m]["per_seed"]), key=int)
        if not seeds:
            continue
        first = 1 if len(a[m]["num_labeled"]) > 1 else 0  # full supervision has one budget and no cold start
        x = np.array([a[m]["per_seed"][s][first:] for s in seeds], dtype=np.float64)
        y = np.array([b[m]["per_seed"][s][first:] for s in seeds], dtype=np.float64)
        d = (x - y) * 100.0
        out[m] = {
            "seeds": len(seeds),
            "cells": int(d.size),
            "identical": int((x == y).sum()),
            "seeds_identical": int((x == y).all(axis=1).sum()),
            "max_diff": float(np.abs(d).max()),
            "mean_diff": [float(v) for v in d.mean(axis=0)],
            "num_labeled": list(a[m]["num_labeled"][first:]),
        }
    return out


def provenance(specs: list[str]) -> list[dict[str, str]]:
    """One row per result file of ``RESULT.json:methods`` specs (each file once): its store fingerprint,
    CPU, kernel level, faiss's BLAS kernels, ISA flags and commit as recorded ("not recorded" where the
    result predates it)."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for spec in specs:
        path = spec.rpartition(":")[0]
        if path in seen:
            continue
        seen.add(path)
        data = json.loads(Path(path).read_text())
        dev = data.get("device") or {}
        store = data.get("store") or {}
        rows.append(
            {
                "result": path,
                "store content": store.get("fingerprint", "not recorded"),
                "cpu": str(dev.get("cpu", "not recorded")),
                "kernels": str(dev.get("cpu_capability") or "not recorded"),
                "faiss BLAS": str((dev.get("faiss_blas") or {}).get("used") or "not recorded"),
                "ISA flags": ", ".join(dev["cpu_isa"]) if dev.get("cpu_isa") is not None else "not recorded",
                "commit": str(dev.get("git_commit") or "not recorded"),
            }
        )
    return rows


def same_store(a: list[dict[str, str]], b: list[dict[str, str]]) -> str:
    """``yes`` when every result of both sides recorded one and the same store fingerprint, ``no`` when
    both sides recorded fingerprints and they differ, else ``unknown`` (a result predates the record)."""
    fa = {r["store content"] for r in a}
    fb = {r["store content"] for r in b}
    if "not recorded" in fa | fb:
        return "unknown (a result does not record its store)"
    return "yes" if fa == fb and len(fa) == 1 else "no"


def report(
    result: dict[str, dict[str, Any]],
    name: str,
    command: str,
    sides: tuple[list[dict[str, str]], list[dict[str, str]]] | None = None,
) -> str:
    rows = []
    total = sum(r["cells"] for r in result.values())
    same = sum(r["identical"] for r in result.values())
    for m, r in result.items():
        rows.append(
            {
                "method": m,
                "seeds identical in every cell": f"{r['seeds_identical']} / {r['seeds']}",
                "cells identical": f"{r['identical']} / {r['cells']}",
                "largest difference (points)": f"{r['max_diff']:.1f}",
                "mean a - b (points)": " / ".join(f"{v:+.2f}" for v in r["mean_diff"]),
            }
        )
    longest = max((r["num_labeled"] for r in result.values()), key=len, default=[])
    budgets = " / ".join(str(n) for n in longest)
    share = f"{same} of {total} ({100.0 * same / total:.0f}%)" if total else "none"
    where = ""
    if sides is not None:
        prov = [{"side": side, **r} for side, rs in zip("ab", sides, strict=True) for r in rs]
        where = (
            f"- same embeddings on both sides: **{same_store(*sides)}**\n\n"
            + "Where each side ran (as its results record it):\n\n"
            + md_table(prov, list(prov[0]))
            + "\n"
        )
    return (
        f"# {name}: the same methods measured twice, seed by seed\n\n"
        f"- command: `{command}`\n"
        f"- cells after the cold start identical bit for bit: **{share}**\n\n"
        + f"- budgets after the cold start: {budgets} labels\n\n"
        + md_table(rows, list(rows[0]) if rows else ["method"])
        + "\n"
        + (f"\n{where}" if where else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_seeds", description=__doc__.split("\n")[0])
    p.add_argument("--name", default="Comparison", help="title of the report")
    p.add_argument("--a", nargs="+", required=True, metavar="RESULT.json:methods", help="one measurement")
    p.add_argument("--b", nargs="+", required=True, metavar="RESULT.json:methods", help="the other")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    try:
        result = compare(pool_summaries(args.a, require=None), pool_summaries(args.b, require=None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sides = (provenance(args.a), provenance(args.b))
    text = report(result, args.name, command_line("benchmarks.compare_seeds", argv), sides)
    emit_report(args.out, {**result, "_provenance": {"a": sides[0], "b": sides[1]}}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
