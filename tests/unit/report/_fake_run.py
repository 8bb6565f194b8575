"""Hand-written run directories for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["beach", "forest", "river", "harbor"]


def make_run(
    root: Path, name: str = "hal_run", rounds: int = 3, strategy: str = "hal", final_round: bool = False
) -> Path:
    """A run directory with ``rounds`` completed rounds and one malformed metrics line.

    Round r: ``num_labeled = 8 + 4 r``, ``test_accuracy = 0.5 + 0.125 r``; each query has 4 samples;
    round 1's answers are only in labeled.parquet (no labels.csv), round 0 has coverage only in query.csv.
    As in the loop, the 8 cold-start labels have ``round_added`` 0 and round r's answers ``r + 1``.
    ``final_round``: one more round, the last (``final`` in metrics), which trains and evaluates
    but queries nothing.
    """
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed: 0\nquery:\n  strategy: {strategy}\n  budget: 4\n")
    (run / "classes.json").write_text(json.dumps(CLASSES))
    (run / "state.json").write_text(json.dumps({"round": rounds, "stage": "train", "status": "running"}))
    ids, labels, added, sources = (
        [f"seed{i}" for i in range(8)],
        [i % 4 for i in range(8)],
        [0] * 8,
        ["simulated"] * 8,
    )
    lines = []
    for r in range(rounds):
        rd = run / f"round_{r:03d}"
        rd.mkdir()
        qids = [f"q{r}_{i}" for i in range(4)]
        qlabels = [1, 1, 2, r % 4]
        clusters = [0, 1, 1, 2]
        rows = "".join(
            f"{s},{i + 1},{0.9 - 0.1 * i},{c}\n" for i, (s, c) in enumerate(zip(qids, clusters, strict=True))
        )
        (rd / "query.csv").write_text("sample_id,rank,u,coarse_cluster\n" + rows)
        if r != 1:
            answers = "".join(f"{s},{CLASSES[lab]}\n" for s, lab in zip(qids, qlabels, strict=True))
            (rd / "labels.csv").write_text("sample_id,label\n" + answers)
        ids += qids
        labels += qlabels
        added += [r + 1] * 4
        sources += ["simulated"] * 4
        metrics = {
            "round": r,
            "num_labeled": 8 + 4 * r,
            "test_accuracy": 0.5 + 0.125 * r,
            "label_fraction": (8 + 4 * r) / 400,
            "mask_rate": 0.25 + 0.1 * r,
            "pseudo_label_acc": 0.8,
            "sup_loss": 1.23456,
            "unsup_loss": 0.5,
            "strategy": strategy,
            "final": False,
            "wall_s": {"train": 10.0 + r, "score": 2.5, "query": 0.25, "oracle": 0.0, "eval": 1.0},
        }
        if r > 0:
            metrics |= {"coarse_clusters_covered": 3, "coarse_k": 5}
        lines.append(json.dumps(metrics))
        if r == 0:
            lines.append("{not json")
            lines.append(json.dumps({"round": 99, "num_labeled": "many"}))
    if final_round:
        (run / f"round_{rounds:03d}").mkdir()  # trained and evaluated; no query.csv, no labels.csv
        metrics = {
            "round": rounds,
            "num_labeled": 8 + 4 * rounds,
            "test_accuracy": 0.9,
            "strategy": strategy,
            "final": True,
            "wall_s": {"train": 10.0, "eval": 1.0},
        }
        lines.append(json.dumps(metrics))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "round_added": pa.array(added, pa.int32()),
            "source": pa.array(sources, pa.string()),
        }
    )
    pq.write_table(table, run / "labeled.parquet")
    return run
