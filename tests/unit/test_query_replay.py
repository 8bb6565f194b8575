"""``benchmarks.query_replay``: a recorded batch replays exactly, a changed one is caught, options counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.query_replay import main, replay_trial, summarise
from hssal_ray import _csv
from hssal_ray.config import config_from_dict, config_to_yaml
from hssal_ray.loop.query_batch import run_query
from hssal_ray.query import write_scores
from tests.unit.query._data import blob_pool


def _run(tmp_path: Path, name: str, seed: int) -> Path:
    """A run directory with two query rounds recorded by the product's own query (HAL, profile-like)."""
    run = tmp_path / "sweep" / name
    cfg = config_from_dict(
        {
            "seed": seed,
            "data": {"root": str(tmp_path)},
            "query": {
                "strategy": "hal",
                "budget": 12,
                "uncertainty": "margin",
                "alloc_over": "global",
                "candidate_ratio": 10,
                "kmeans_backend": "torch",
            },
        }
    )
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    pool, blob = blob_pool(n=500, n_blobs=6, seed=seed)
    labeled = {str(s): int(blob[i]) for i, s in enumerate(pool.ids[:20])}
    added = dict.fromkeys(labeled, 0)
    for r in range(2):
        rd = run / f"round_{r:03d}"
        rd.mkdir()
        write_scores(str(rd / "scores.parquet"), pool.ids, pool.embeddings, pool.probs, pool.scores)
        ids, _, _, _ = run_query(cfg, str(rd / "scores.parquet"), 12, dict(labeled), r)
        buf = io.StringIO()
        _csv.writer(buf, lineterminator="\n").writerows([["sample_id"], *[[s] for s in ids]])
        (rd / "query.csv").write_text(buf.getvalue())
        row = {str(s): i for i, s in enumerate(pool.ids)}
        for s in ids:
            labeled[s] = int(blob[row[s]])
            added[s] = r + 1
    table = pa.table(
        {
            "sample_id": list(labeled),
            "label": pa.array(list(labeled.values()), pa.int32()),
            "round_added": pa.array([added[s] for s in labeled], pa.int32()),
            "source": ["simulated"] * len(labeled),
        }
    )
    pq.write_table(table, run / "labeled.parquet")
    return run


def test_replay_reproduces_the_recorded_batch_and_counts_what_an_option_changes(tmp_path: Path) -> None:
    run = _run(tmp_path, "t0", seed=1)
    rows = replay_trial(run, [])
    assert [r["round"] for r in rows] == [0, 1] and all(r["reproduced"] for r in rows)
    assert all("differ" not in r for r in rows)
    other = replay_trial(run, ["query.alloc_over=pool", "query.pick=uncertain"])
    assert all(r["reproduced"] for r in other) and any(r["differ"] > 0 for r in other)
    assert all(0 <= r["differ"] <= 12 and 0.0 <= r["moved"] <= 1.0 for r in other)
    same = replay_trial(run, ["query.parallel=false"])  # a runtime key: the same batch
    assert all(r["differ"] == 0 and r["moved"] == 0.0 for r in same)
    # a batch that is not the one the config gives is reported as not reproduced
    q = run / "round_001" / "query.csv"
    lines = q.read_text().splitlines()
    q.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    assert [r["reproduced"] for r in replay_trial(run, [])] == [True, False]


def test_summary_and_report(tmp_path: Path) -> None:
    for i in range(2):
        _run(tmp_path, f"t{i}", seed=i + 3)
    s = summarise([tmp_path / "sweep"], ["query.pick=typical"])
    assert s["trials"] == 2 and sorted(s["rounds"]) == [0, 1]
    r0 = s["rounds"][0]
    assert r0["trials"] == 2 and r0["reproduced"] == 1.0 and r0["budget"] == 12
    assert len(r0["differ"]) == 3 and r0["differ"][1] <= r0["differ"][0] <= r0["differ"][2]
    out = tmp_path / "res" / "replay"
    assert main([str(tmp_path / "sweep"), "--set", "query.pick=typical", "--out", str(out)]) == 0
    md = (tmp_path / "res" / "replay.md").read_text()
    assert "| 0 | 2 | 12 | 1.00 |" in md and "query.pick=typical" in md
    assert np.isclose(
        json.loads((tmp_path / "res" / "replay.json").read_text())["rounds"]["0"]["reproduced"], 1.0
    )
