"""Human hand-off: the loop stops awaiting labels, bad files are rejected untouched, a good file resumes."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import SMOKE, run_cli

pytestmark = pytest.mark.ray


def _snapshot(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def _truth(run: Path) -> dict[str, str]:
    t = pq.read_table(run / "manifest.parquet")
    return dict(zip(t["sample_id"].to_pylist(), t["class_name"].to_pylist(), strict=True))


def _query_ids(d: Path) -> list[str]:
    with open(d / "query.csv") as f:
        return [r["sample_id"] for r in csv.DictReader(f)]


def _write(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("sample_id", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_human_oracle_round_trip(tmp_path: Path) -> None:
    args = [*SMOKE, "oracle.kind=human", "loop.rounds=1", f"loop.run_dir={tmp_path}", "loop.name=h"]
    proc = run_cli(*args)
    run = tmp_path / "h"
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "awaiting_labels" and state["stage"] == "init"
    assert "--resume" in proc.stderr and "--labels" in proc.stderr
    cold = run / "cold_start"
    for name in ("query.csv", "label_studio_tasks.json", "contact_sheet.html", "INSTRUCTIONS.txt"):
        assert (cold / name).exists(), name
    ids = _query_ids(cold)
    truth = _truth(run)
    classes = json.loads((run / "classes.json").read_text())
    good = [(s, truth[s]) for s in ids]

    bad_files = {
        "unknown class": [(ids[0], "not_a_class"), *good[1:]],
        "not in this round's query": [*good, ("some/other.png", classes[0])],
        "conflicting answers": [*good, (ids[0], next(c for c in classes if c != truth[ids[0]]))],
        "without a label": good[:-1],
    }
    before = _snapshot(run)
    for expect, rows in bad_files.items():
        f = _write(tmp_path / "bad.csv", rows)
        proc = run_cli("--resume", str(run), "--labels", str(f), check=False)
        assert proc.returncode == 2, proc.stderr
        assert expect in proc.stderr, (expect, proc.stderr)
        assert _snapshot(run) == before, f"state changed after rejecting a file with {expect!r}"
    f = _write(tmp_path / "cols.csv", good, header=("id", "class"))
    proc = run_cli("--resume", str(run), "--labels", str(f), check=False)
    assert proc.returncode == 2 and "column" in proc.stderr
    assert _snapshot(run) == before

    # good cold-start labels: trains round 0, queries, and waits again
    run_cli("--resume", str(run), "--labels", str(_write(tmp_path / "good0.csv", good)))
    state = json.loads((run / "state.json").read_text())
    assert (state["status"], state["stage"], state["round"]) == ("awaiting_labels", "label", 0)
    ids1 = _query_ids(run / "round_000")
    assert len(ids1) == 3 and not set(ids1) & set(ids)
    # a Label Studio JSON export answers the second batch
    export = [
        {"data": {"sample_id": s}, "annotations": [{"result": [{"value": {"choices": [truth[s]]}}]}]}
        for s in ids1
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))
    run_cli("--resume", str(run), "--labels", str(tmp_path / "export.json"))
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "done"
    lab = pq.read_table(run / "labeled.parquet").to_pylist()
    assert len(lab) == len(ids) + 3
    assert {r["source"] for r in lab} == {"human"}
    assert all(classes[r["label"]] == truth[r["sample_id"]] for r in lab)
