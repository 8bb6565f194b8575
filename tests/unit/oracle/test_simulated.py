"""The simulated oracle answers from ground truth and records labels.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hssal_ray.errors import DataError, HSSALError
from hssal_ray.oracle import LABELS_FILE, Oracle, OracleAnswer, SimulatedOracle, parse_label_file

CLASSES = ["beach", "forest", "river"]


def test_answers_from_mapping_and_records_labels_csv(tmp_path: Path) -> None:
    oracle = SimulatedOracle({"a": 2, "b": np.int64(0), "c": 1}, CLASSES)
    rd = tmp_path / "round_001"
    oracle.request(str(rd), ["c", "a"], {"round": 1})  # no-op, but part of the protocol
    ans = oracle.collect(str(rd), ["c", "a"])
    assert ans == OracleAnswer(labels={"c": 1, "a": 2}, missing=[], source="oracle")
    assert (rd / LABELS_FILE).read_text() == "sample_id,label\nc,forest\na,river\n"
    again = parse_label_file(str(rd / LABELS_FILE), query_ids=["c", "a"], class_names=CLASSES)
    assert again.labels == ans.labels
    assert isinstance(oracle, Oracle) and not oracle.may_pause
    assert "SimulatedOracle(" in repr(oracle) and "<3 labels>" in repr(oracle)


def test_answers_from_callable(tmp_path: Path) -> None:
    truth = {"x1": 1, "x2": 2}
    oracle = SimulatedOracle(truth.__getitem__, CLASSES)
    assert oracle.collect(str(tmp_path), ["x2", "x1"]).labels == {"x2": 2, "x1": 1}


def test_ids_without_ground_truth_are_a_clear_error(tmp_path: Path) -> None:
    oracle = SimulatedOracle({"a": 0}, CLASSES)
    with pytest.raises(DataError) as info:
        oracle.collect(str(tmp_path), ["a", "ghost", *[f"g{i}" for i in range(12)]])
    msg = str(info.value)
    assert isinstance(info.value, HSSALError)
    assert "13 of 14 queried ids have no ground-truth label" in msg
    assert "'ghost'" in msg and "... and 3 more" in msg
    assert not (tmp_path / LABELS_FILE).exists()


def test_invalid_ground_truth_values_are_named(tmp_path: Path) -> None:
    oracle = SimulatedOracle(lambda s: {"a": 5, "b": "river", "c": True}.get(s), CLASSES)
    with pytest.raises(
        DataError, match=r"not class indices in 0\.\.2: 'a' -> 5, 'b' -> 'river', 'c' -> True"
    ):
        oracle.collect(str(tmp_path), ["a", "b", "c"])


def test_rejects_empty_class_names() -> None:
    with pytest.raises(ValueError, match="class_names"):
        SimulatedOracle({}, [])
