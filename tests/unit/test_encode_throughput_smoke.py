"""``python -m benchmarks.encode_throughput`` on a tiny generated dataset: every setting builds the
product's store, and the comparison against the NCHW store is what the settings imply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hssal_ray.data.synthetic import make_synthetic_rs


@pytest.mark.slow  # eight Ray Data runs, about 40 s
def test_encode_throughput_smoke(tmp_path: Path) -> None:
    from benchmarks.encode_throughput import SETTINGS, main

    data = tmp_path / "data"
    make_synthetic_rs(str(data), num_classes=2, per_class=3, size=24, seed=0)
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "ssl: {model: hssal_small_cnn, finetune: frozen, eval_batch_size: 2}\n"
        "data: {image_size: 16}\nfrozen: {embed_views: 1}\nresources: {num_cpus: 2}\n"
    )
    argv = ["--data", str(data), "--per-class", "3", "--profile", str(profile), "--repeats", "1"]
    argv += ["--actors", "2"]  # 3 batches of 2 images over 2 actors
    try:
        assert main([*argv, "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 0
    finally:  # the benchmark starts Ray in this process: leave none behind for the tests after it
        import ray

        ray.shutdown()
    result = json.loads((tmp_path / "out" / "encode_throughput.json").read_text())
    assert result["images"] == 6 and result["views"] == 3  # none, weak_0, strong_0
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == [*SETTINGS, "channels_last fp32, 2 actor(s)"]
    ref = rows["nchw fp32"]
    assert ref["values_differ"] == 0 and ref["max_abs_diff"] == 0 and ref["encode_speedup"] == 1
    assert rows["channels_last fp32"]["min_row_cosine"] > 0.99999  # fp32 rounding apart
    # two encode actors split the batches between them: the same store, bit for bit
    assert "channels_last fp32" in rows["channels_last fp32, 2 actor(s)"]["same_values_as"]
    assert all(r["encode_img_s"] > 0 and r["backbone_img_s"] > 0 for r in rows.values())
    assert "channels_last bf16" in (tmp_path / "out" / "encode_throughput.md").read_text()
