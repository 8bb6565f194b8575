"""The benchmark harness's own helper (the rest of it only configures and runs the product)."""

from __future__ import annotations

import numpy as np

from benchmarks._product import stratified_subset


def test_stratified_subset_takes_the_fraction_of_the_split_over_every_class() -> None:
    y = np.repeat(np.arange(4), [10, 20, 30, 3])
    rows = stratified_subset(y, 0.1, seed=0)
    assert np.bincount(y[rows]).tolist() == [1, 2, 3, 1]  # floor(0.3) -> at least one
    # UCM's shape: 21 classes x 80 -> 8% is 134 images (6.4 a class: 6 each + 8 classes get a 7th)
    ucm = np.repeat(np.arange(21), 80)
    counts = [np.bincount(ucm[stratified_subset(ucm, 0.08, seed=s)]) for s in (0, 1)]
    for c in counts:
        assert c.sum() == 134 and set(c.tolist()) == {6, 7} and (c == 7).sum() == 8
    assert not np.array_equal(counts[0], counts[1])
    assert np.array_equal(rows, stratified_subset(y, 0.1, seed=0))
    assert not np.array_equal(rows, stratified_subset(y, 0.1, seed=1))


def test_validation_budgets_can_be_the_test_runs_counts(tmp_path) -> None:
    from benchmarks._product import base_config, budgets_as_in_test
    from tests.data.make_tiny import tiny_imagefolder

    root = tiny_imagefolder(str(tmp_path / "ds"), num_classes=3, per_class=50)  # 120 training rows
    over = [f"data.root={root}", "loop.initial_labeled=0.05", "query.budget=0.05", "loop.total_budget=0.2"]
    cfg = base_config("configs/ucm_cpu.yaml", over)
    counts = budgets_as_in_test(cfg)
    assert counts == ["loop.initial_labeled=6", "query.budget=6", "loop.total_budget=24"]
    carve = ["data.val_fraction=0.2", "data.eval_split=val"]
    val = base_config("configs/ucm_cpu.yaml", [*over, *counts, *carve])
    assert (val.loop.initial_labeled, val.query.budget, val.loop.total_budget) == (6, 6, 24)
    as_counts = base_config(
        "configs/ucm_cpu.yaml",
        [f"data.root={root}", "loop.initial_labeled=10", "query.budget=5", "loop.total_budget=20"],
    )
    assert budgets_as_in_test(as_counts) == []


def test_store_fingerprint_follows_the_stored_values_not_the_block_size() -> None:
    from benchmarks._product import store_fingerprint
    from hssal_ray.frozen.store import EmbeddingStore

    rng = np.random.default_rng(0)
    ids = [f"c/{i:03d}.png" for i in range(50)]
    views = {v: rng.standard_normal((50, 6)).astype(np.float16) for v in ("none", "weak_0")}
    missing = np.zeros(50, dtype=bool)

    def fp(v=views, m=missing, ids=ids, block_rows=7) -> str:
        return store_fingerprint(EmbeddingStore("mem", ids, v, m), block_rows=block_rows)

    base = fp()
    assert len(base) == 20 and base == fp(block_rows=64)  # a content hash, not of how it was read
    assert base == fp(v={k: a.copy() for k, a in views.items()})
    flipped = {k: a.copy() for k, a in views.items()}
    flipped["weak_0"].view(np.uint16)[31, 2] ^= 1  # one value's last bit
    assert fp(v=flipped) != base
    gone = missing.copy()
    gone[3] = True
    assert fp(m=gone) != base
    assert fp(ids=[*ids[:-1], "c/zzz.png"]) != base
    swapped = {"none": views["weak_0"], "weak_0": views["none"]}  # the views are named in the hash
    assert fp(v=swapped) != base


def test_store_identity_finds_the_store_the_loop_uses(tmp_path) -> None:
    import os

    from benchmarks._product import base_config, store_fingerprint, store_identity, store_location
    from hssal_ray.frozen.store import open_store, view_names, write_arrays
    from tests.data.make_tiny import tiny_imagefolder

    root = tiny_imagefolder(str(tmp_path / "ds"), num_classes=2, per_class=5)
    cache = str(tmp_path / "cache")
    cfg = base_config("configs/ucm_cpu.yaml", [f"data.root={root}", f"data.embedding_cache={cache}"])
    path, key, n = store_location(cfg)
    assert os.path.dirname(path) == cache and os.path.basename(path) == key and n == 10
    from hssal_ray.data.catalog import scan

    ids = scan(root).table.column("sample_id").to_pylist()
    views = view_names(cfg.frozen.embed_views)
    rng = np.random.default_rng(1)
    feats = {v: rng.standard_normal((n, 4)).astype(np.float16) for v in views}
    write_arrays(path, ids, [feats], views, meta={"key": key, "complete": True, "rows": n})
    got = store_identity(cfg, str(tmp_path / "run"))
    assert got == {"key": key, "path": path, "fingerprint": store_fingerprint(open_store(path, views, n))}
    image = base_config("configs/demo.yaml", [f"data.root={root}"])  # the image learner shares no store
    assert store_location(image) is None and store_identity(image, str(tmp_path / "run")) is None
