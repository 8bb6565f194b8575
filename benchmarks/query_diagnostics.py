"""Per-round diagnostics of the batches the product's query strategies picked, from finished runs.

    python -m benchmarks.query_diagnostics runs/benchmarks/label_efficiency/label_efficiency_ssl
    python -m benchmarks.query_diagnostics SWEEP [SWEEP ...] --out benchmarks/results/query_diagnostics

Reads what the loop wrote and nothing else: each trial's ``round_XXX/query.csv`` (the batch),
``round_XXX/scores.parquet`` (the round model's predictions, uncertainties and embeddings over the
training split), ``labeled.parquet``, ``manifest.parquet`` (the true labels: simulated oracle runs
only) and ``metrics.jsonl``. For every strategy and query round, averaged over seeds:

- ``classes``: distinct true classes in the batch / min(batch, classes) (1 = as spread as possible);
- ``wrong``: share of picks the round's model gets wrong (pred != truth); ``pool_wrong``: its error
  rate over the unlabeled pool (so ``wrong / pool_wrong`` says how well the batch aims at errors);
- ``u_pct``: mean percentile of the picks' margin uncertainty within the pool (100 = most uncertain);
- ``sim_batch``: mean cosine similarity of each pick to its nearest other pick (near-duplicates -> 1);
- ``sim_labeled``: mean cosine similarity of each pick to its nearest already-labeled sample;
- ``err_cover``: share of the pool's misclassified *classes* (classes holding >= 2% of the pool's
  errors) that received at least one pick;
- ``gain``: accuracy of the next round minus this round's (points), the quantity being explained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks._common import command_line, emit_report, query_rounds, sweep_round_means

__all__ = ["round_diagnostics", "trial_diagnostics", "summarise", "main"]


def round_diagnostics(
    picks: np.ndarray,
    labeled: np.ndarray,
    pool: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    u_margin: np.ndarray,
    emb: np.ndarray,
    num_classes: int,
) -> dict[str, float]:
    """Diagnostics of one batch. Every array is indexed by rows of the round's scores file.

    Args:
        picks: rows picked this round.
        labeled: rows labeled before the round.
        pool: rows of the unlabeled pool when the batch was picked (picks are among them).
        truth, pred: (n,) true and predicted classes.
        u_margin: (n,) margin uncertainty (higher = more uncertain).
        emb: (n, d) L2-normalised embeddings.
        num_classes: number of classes.
    """
    out: dict[str, float] = {}
    b = len(picks)
    out["classes"] = len(np.unique(truth[picks])) / max(1, min(b, num_classes))
    out["wrong"] = float(np.mean(pred[picks] != truth[picks]))
    out["pool_wrong"] = float(np.mean(pred[pool] != truth[pool]))
    ranks = np.argsort(np.argsort(u_margin[pool], kind="stable"), kind="stable")
    pct = np.empty(len(u_margin))
    pct[pool] = 100.0 * (ranks + 0.5) / len(pool)
    out["u_pct"] = float(pct[picks].mean())
    e = emb[picks].astype(np.float32)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    if b > 1:
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        out["sim_batch"] = float(s.max(1).mean())
    if len(labeled):
        lab = emb[labeled].astype(np.float32)
        lab /= np.maximum(np.linalg.norm(lab, axis=1, keepdims=True), 1e-12)
        out["sim_labeled"] = float((e @ lab.T).max(1).mean())
    errs = pool[pred[pool] != truth[pool]]
    if len(errs):
        hist = np.bincount(truth[errs], minlength=num_classes) / len(errs)
        err_classes = np.flatnonzero(hist >= 0.02)
        out["err_cover"] = float(np.isin(err_classes, truth[picks]).mean()) if err_classes.size else 1.0
    return out


def trial_diagnostics(run: Path) -> list[dict[str, float]]:
    """Diagnostics of every query round of one finished run directory (simulated oracle)."""
    import pyarrow.parquet as pq

    from hssal_ray.query.scores_io import load_pool

    man = pq.read_table(run / "manifest.parquet", columns=["sample_id", "label"]).to_pydict()
    label_of = dict(zip(man["sample_id"], man["label"], strict=True))
    num_classes = len(json.loads((run / "classes.json").read_text()))
    lab = pq.read_table(run / "labeled.parquet", columns=["sample_id", "round_added"]).to_pydict()
    added = dict(zip(lab["sample_id"], lab["round_added"], strict=True))
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    acc = {int(m["round"]): m.get("test_accuracy") for m in metrics}
    out = []
    for r, sf, q in query_rounds(run):
        pool_s = load_pool(str(sf), columns=["embedding", "probs", "u_margin", "pred"])
        ids = np.asarray(pool_s.ids, dtype=object)
        row_of = {s: i for i, s in enumerate(ids)}
        truth = np.array([label_of[s] for s in ids])
        was_labeled = np.array([added.get(s, 10**9) <= r for s in ids])
        picks = np.array([row_of[s] for s in q if s in row_of])
        if picks.size == 0:
            continue
        d = round_diagnostics(
            picks,
            np.flatnonzero(was_labeled),
            np.flatnonzero(~was_labeled),
            truth,
            np.asarray(pool_s.pred),
            np.asarray(pool_s.scores["u_margin"]),
            np.asarray(pool_s.embeddings),
            num_classes,
        )
        if acc.get(r) is not None and acc.get(r + 1) is not None:
            d["gain"] = 100.0 * (acc[r + 1] - acc[r])
        d["round"] = r
        out.append(d)
    return out


def summarise(sweeps: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """``{strategy: {round: {diagnostic: mean over seeds}}}`` over every trial of the sweeps."""
    return sweep_round_means(sweeps, trial_diagnostics, "metrics.jsonl")


COLUMNS = ("classes", "wrong", "pool_wrong", "u_pct", "sim_batch", "sim_labeled", "err_cover", "gain")


def report_markdown(summary: dict[str, dict[int, dict[str, float]]], command: str) -> str:
    md = [
        "# Query diagnostics (what each strategy's batches looked like)",
        "",
        f"- command: `{command}`",
        "- per strategy and query round, mean over seeds; see the module docstring of "
        "`benchmarks/query_diagnostics.py` for each column",
        "",
        "| strategy | round | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for s, rounds in summary.items():
        for r, d in rounds.items():
            cells = [f"{d[c]:.3f}" if c in d else "" for c in COLUMNS]
            md.append(f"| {s} | {r} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.query_diagnostics", description=__doc__.split("\n")[0]
    )
    p.add_argument("sweeps", nargs="+", help="sweep directories holding trial run directories")
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    summary = summarise([Path(s) for s in args.sweeps])
    text = report_markdown(summary, command_line("benchmarks.query_diagnostics", argv))
    emit_report(args.out, summary, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
