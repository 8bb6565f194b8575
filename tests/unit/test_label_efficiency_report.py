"""The label-efficiency benchmark's report names the dataset it ran on and the size of its test split.

The benchmark itself takes about 30 minutes; here its trials are replaced by fixed metrics rows
(``start`` and ``run_grid`` stubbed), and everything after them (split size, report, plot) is real.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import benchmarks.label_efficiency as le
from hssal_ray.config import load_config
from hssal_ray.data.synthetic import make_synthetic_rs


def test_dataset_name_and_split_wording() -> None:
    assert le.dataset_name("../shared/data/siri_whu") == "siri_whu"
    assert le.dataset_name("/data/my archive/") == "my archive"
    assert le.dataset_name("s3://bucket/rs/nwpu") == "nwpu"
    assert le.dataset_name("../shared/data/siri_whu", "SIRI-WHU") == "SIRI-WHU"
    assert le.evaluated_on(0.0, 560) == "test split (560 images)"
    assert le.evaluated_on(0.2, 336) == "validation split (20% of train, 336 images)"


def _fake_grid(
    base: Any, name: str, run_dir: str, space: dict[str, list[Any]], **_: Any
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    full = name.endswith("_full")
    rows = (
        [{"round": 0, "num_labeled": 40, "test_accuracy": 0.9, "test_accuracy_online": 0.9}]
        if full
        else [
            {
                "round": r,
                "num_labeled": 2 + 2 * r,
                "test_accuracy": 0.5 + 0.1 * r,
                "test_accuracy_online": 0.5,
            }
            for r in range(3)
        ]
    )
    return {key: rows for key in product(*space.values())}


@pytest.mark.parametrize(("dataset_name", "full"), [(None, True), ("SIRI-WHU", True), (None, False)])
def test_report_and_plot_name_the_dataset_used_and_its_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset_name: str | None, full: bool
) -> None:
    root = make_synthetic_rs(str(tmp_path / "siri_whu"), num_classes=4, per_class=10, size=16)
    base = load_config(None, [f"data.root={root}", "data.test_fraction=0.3"])
    monkeypatch.setattr(le, "start", lambda args: (base, str(tmp_path / "runs"), 0.0, 28))
    monkeypatch.setattr(le, "run_grid", _fake_grid)
    store = {"key": "k1", "path": "p", "fingerprint": "ab" * 10}
    monkeypatch.setattr(le, "store_identity", lambda cfg, run_dir: store)
    out = tmp_path / "out"
    argv = ["--data", root, "--seeds", "1", "--out", str(out), "--methods", "hssal"]
    argv += ["full_supervision"] if full else []
    if dataset_name:
        argv[:0] = ["--dataset-name", dataset_name]
    assert le.main(argv) == 0

    want = dataset_name or "siri_whu"
    result = json.loads((out / "label_efficiency.json").read_text())
    assert result["dataset"] == want and result["n_eval"] == 12  # 30% of 40 images
    md = (out / "label_efficiency.md").read_text()
    assert md.startswith(f"# Label efficiency on {want} (")
    assert "test split (12 images)" in md
    assert "UCM" not in md and "420" not in md
    assert result["store"] == store and f"- embeddings: store `k1`, content fingerprint `{'ab' * 10}`" in md
    hssal_row = next(line for line in md.splitlines() if line.startswith("| hssal |"))
    # without a full-supervision run the last cell says so (it printed "nan%")
    assert hssal_row.endswith("% |" if full else "— (no full supervision run) |") and "nan" not in md
    title = le.efficiency_figure(result).axes[0].get_title()  # the figure saved as the PNG
    assert want in title and "12 images" in title and "UCM" not in title
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def _summary(per_seed: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
    return {m: {"num_labeled": [10, 20, 30], "per_seed": s} for m, s in per_seed.items()}


def test_curve_margins_average_the_rounds_after_the_cold_start_per_seed() -> None:
    from benchmarks._efficiency_report import curve_margins

    h = {0: [0.5, 0.80, 0.90], 1: [0.6, 0.82, 0.86], 2: [0.4, 0.78, 0.88]}
    ahead = {s: [a, b - 0.02, c - 0.04] for s, (a, b, c) in h.items()}  # HSSAL +3 points on every seed
    mixed = {0: [0.5, 0.81, 0.91], 1: [0.6, 0.80, 0.86], 2: [0.4, 0.79, 0.87]}  # -1, +1, 0 points
    c = curve_margins(
        _summary({"hssal": h, "ssl_margin": ahead, "ssl_entropy": mixed, "full_supervision": h})
    )
    assert set(c) == {"ssl_margin", "ssl_entropy"}
    np.testing.assert_allclose(c["ssl_margin"]["per_seed"], [0.03, 0.03, 0.03], atol=1e-12)
    assert c["ssl_margin"]["verdict"] == "ahead" and c["ssl_margin"]["wins"] == 3
    np.testing.assert_allclose(c["ssl_entropy"]["per_seed"], [-0.01, 0.01, 0.0], atol=1e-12)
    lo, hi = c["ssl_entropy"]["ci95"]  # t(0.975, 2) = 4.303, std 0.01, n 3
    np.testing.assert_allclose([lo, hi], [-4.303 * 0.01 / 3**0.5, 4.303 * 0.01 / 3**0.5], atol=1e-4)
    assert c["ssl_entropy"]["verdict"] == "tied"
    behind = curve_margins(_summary({"hssal": ahead, "ssl_margin": h}))["ssl_margin"]
    assert behind["verdict"] == "behind" and behind["wins"] == 0


def test_render_rebuilds_the_report_from_a_result_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_synthetic_rs(str(tmp_path / "d"), num_classes=4, per_class=10, size=16)
    base = load_config(None, [f"data.root={root}", "data.test_fraction=0.3"])
    monkeypatch.setattr(le, "start", lambda args: (base, str(tmp_path / "runs"), 0.0, 28))
    monkeypatch.setattr(le, "run_grid", _fake_grid)
    out = tmp_path / "out"
    argv = ["--data", root, "--seeds", "2", "--out", str(out), "--methods", "hssal", "ssl_margin"]
    assert le.main(argv) == 0
    path = out / "label_efficiency.json"
    stored = json.loads(path.read_text())
    assert stored["curve_vs_hssal"]["ssl_margin"]["verdict"] == "tied"  # the fake grid: identical curves
    del stored["curve_vs_hssal"], stored["checks"]  # a result written before these fields existed
    path.write_text(json.dumps(stored))
    (out / "label_efficiency.md").unlink()
    assert le.main(["--render", str(path)]) == 0
    again = json.loads(path.read_text())
    assert again["curve_vs_hssal"]["ssl_margin"]["verdict"] == "tied" and again["checks"]
    assert "Over the whole curve after the cold start" in (out / "label_efficiency.md").read_text()
    with pytest.raises(SystemExit):
        le.main(["--render", str(tmp_path / "missing.json")])


def test_lead_needed_grows_with_the_seed_spread_and_the_number_of_cells() -> None:
    from benchmarks._efficiency_report import checks, lead_needed, paired

    rng = np.random.default_rng(0)
    h = {s: [0.5, 0.8, 0.85, 0.9] for s in range(5)}

    def noisy(sd: float) -> dict[int, list[float]]:
        return {s: [0.5, *(np.array(v[1:]) + rng.normal(0, sd, 3))] for s, v in h.items()}

    flat = lead_needed(_summary4({"hssal": h, "ssl_margin": h}))  # no spread: no lead needed
    assert flat["cells"] == 3 and flat["seeds"] == 5 and flat["lead"] == {0.8: 0.0, 0.95: 0.0}
    small = lead_needed(_summary4({"hssal": h, "ssl_margin": noisy(0.005)}))
    wide = lead_needed(_summary4({"hssal": h, "ssl_margin": noisy(0.02)}))
    assert 0.0 < small["lead"][0.95] < wide["lead"][0.95]
    p = list(wide["p_at"].values())
    assert all(a <= b for a, b in zip(p, p[1:], strict=False)) and p[-1] == 1.0  # a chance, rising
    more = lead_needed(_summary4({"hssal": h, **{m: noisy(0.02) for m in ("ssl_margin", "ssl_entropy")}}))
    assert more["cells"] == 6
    assert lead_needed(_summary4({"hssal": h, "supervised_hal": noisy(0.02)})) == {}  # ">" is not ">="
    s = _summary4({"hssal": h, "ssl_margin": noisy(0.02)})
    for m in s.values():
        m |= {"accuracy_std": [0.0] * 4, "label_fraction": [0.02, 0.04, 0.06, 0.08]}
    assert any(line.startswith("How demanding") for line in checks(s, paired(s)))


def _summary4(per_seed: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
    return {m: {"num_labeled": [10, 20, 30, 40], "per_seed": s} for m, s in per_seed.items()}
