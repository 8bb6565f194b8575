"""``benchmarks.ssl_vs_supervised`` on generated data: the protocol, not the numbers.

Checked: the labeled subset is class-stratified and identical across arms of a seed (and differs
between seeds), the SSL arm really uses the unlabeled images (mask rate reported), full
supervision uses every label, the same seed gives the same accuracy, and the table and checks
are written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ssl_vs_supervised as svs
from hssal_ray.data.synthetic import make_synthetic_rs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_synthetic_rs(
        str(tmp_path_factory.mktemp("rs") / "ds"), num_classes=3, per_class=25, size=24, seed=5
    )


def test_stratified_subset_takes_the_fraction_of_the_split_over_every_class() -> None:
    y = np.repeat(np.arange(4), [10, 20, 30, 3])
    rows = svs.stratified_subset(y, 0.1, seed=0)
    assert np.bincount(y[rows]).tolist() == [1, 2, 3, 1]  # floor(0.3) -> at least one
    # UCM's shape: 21 classes x 80 -> 8% is 134 images (6.4 a class: 6 each + 8 classes get a 7th)
    ucm = np.repeat(np.arange(21), 80)
    counts = [np.bincount(ucm[svs.stratified_subset(ucm, 0.08, seed=s)]) for s in (0, 1)]
    for c in counts:
        assert c.sum() == 134 and set(c.tolist()) == {6, 7} and (c == 7).sum() == 8
    assert not np.array_equal(counts[0], counts[1])  # the seed picks which classes get the extra
    assert np.array_equal(rows, np.sort(rows)) and len(set(rows.tolist())) == len(rows)
    assert np.array_equal(rows, svs.stratified_subset(y, 0.1, seed=0))
    assert not np.array_equal(rows, svs.stratified_subset(y, 0.1, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        svs.stratified_subset(y, 0.0, seed=0)


def test_arms_share_labels_and_outputs_hold(data_root: str, tmp_path: Path) -> None:
    argv = [
        "--data", data_root, "--seeds", "2", "--fraction", "0.2", "--steps", "3", "--threads", "1",
        "--arms", "supervised", "fixmatch", "freematch", "full_supervision",
        "--out", str(tmp_path), "--tag", "svs",
        "ssl.model=hssal_small_cnn", "data.image_size=16", "ssl.batch_size=4", "ssl.uratio=2",
        "ssl.eval_batch_size=32",
    ]  # fmt: skip
    assert svs.main(argv) == 0
    res = json.loads((tmp_path / "svs.json").read_text())
    assert res["n_train"] == 60
    runs = {(r["arm"], r["seed"]): r for r in res["runs"]}
    assert len(runs) == 8
    for seed in (0, 1):
        sup, fm = runs["supervised", seed], runs["fixmatch", seed]
        assert sup["num_labeled"] == fm["num_labeled"] == 12  # 20% of 60
        assert sup["labeled_digest"] == fm["labeled_digest"] == runs["freematch", seed]["labeled_digest"]
        assert sup["num_unlabeled_used"] == 0 and fm["num_unlabeled_used"] == 48
        assert "mask_rate" in fm and "mask_rate" not in sup
        assert runs["full_supervision", seed]["num_labeled"] == 60
        assert all(r["steps"] == 3 and 0.0 <= r["accuracy"] <= 1.0 for r in runs.values())
    assert runs["supervised", 0]["labeled_digest"] != runs["supervised", 1]["labeled_digest"]
    assert any(c.startswith("fixmatch > supervised") for c in res["checks"])
    assert any(c.startswith("freematch > supervised") for c in res["checks"])
    md = (tmp_path / "svs.md").read_text()
    assert "| fixmatch | 12 | 2 |" in md and "python -m benchmarks.ssl_vs_supervised" in md
    # deterministic: the same seed reproduces the same run
    again = tmp_path / "again"
    one = [a for a in argv if a not in ("freematch", "full_supervision", "supervised")]
    one[one.index("--seeds") + 1] = "1"
    one[one.index("--out") + 1] = str(again)
    assert svs.main([*one, "--first-seed", "1"]) == 0  # seed 1 alone, as a later batch of seeds runs it
    rerun = json.loads((again / "svs.json").read_text())["runs"]
    assert [(r["arm"], r["seed"]) for r in rerun] == [("fixmatch", 1)]
    for key in ("accuracy", "sup_loss", "mask_rate", "labeled_digest"):
        assert rerun[0][key] == pytest.approx(runs["fixmatch", 1][key])
