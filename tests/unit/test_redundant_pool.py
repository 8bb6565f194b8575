"""benchmarks.redundant_pool on a tiny synthetic ImageFolder and store (no Ray, no image decoded)."""

from __future__ import annotations

import itertools
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import redundant_pool as rp
from benchmarks._redundant import _codes, placeable_share, plan_copies
from hssal_ray.data.catalog import scan
from hssal_ray.errors import DataError
from hssal_ray.frozen.store import open_store, view_names, write_arrays

SIZES = {"farm": 10, "lake": 11, "road": 12}  # 11 and 12: 20% of a class is not a whole number


def _source(tmp_path: Path) -> tuple[str, list[str]]:
    src = tmp_path / "src"
    ids = []
    for c, n in SIZES.items():
        (src / c).mkdir(parents=True)
        for i in range(n):
            (src / c / f"{c}{i:02d}.png").write_bytes(f"{c}-{i}".encode())
            ids.append(f"{c}/{c}{i:02d}.png")
    return str(src), sorted(ids)


def _source_store(src: str, cache: str) -> tuple[dict[str, np.ndarray], list[str]]:
    cfg = rp._config("configs/ucm_cpu.yaml", src, [f"data.embedding_cache={cache}"])
    path, n = rp.store_location(cfg)
    ids = scan(src).table.column("sample_id").to_pylist()
    views = view_names(cfg.frozen.embed_views)
    rng = np.random.default_rng(0)
    feats = {v: rng.standard_normal((n, 8)).astype(np.float16) for v in views}
    write_arrays(path, ids, [feats], views, meta={"key": os.path.basename(path), "complete": True, "rows": n})
    return feats, ids


def _build(tmp_path: Path, name: str, *flags: str) -> tuple[Any, ...]:
    """``build`` of the synthetic source into ``tmp_path / name``: (src, images, feats, src ids, out,
    overrides, report)."""
    src, images = _source(tmp_path)
    cache = str(tmp_path / "cache")
    feats, src_ids = _source_store(src, cache)
    out = str(tmp_path / name)
    over = [f"data.embedding_cache={cache}"]
    argv = ["build", "--data", src, *flags, "--out", out, "--report", str(tmp_path / "report"), *over]
    assert rp.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    return src, images, feats, src_ids, out, over, report


def test_build_links_splits_and_views(tmp_path: Path) -> None:
    src, images, feats, src_ids, out, over, report = _build(tmp_path, "pool", "--copies", "4", "--seeds", "3")

    # hard links of the source images, nothing else
    files = sorted(
        str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file() and p.name != rp.MARKER
    )
    copies = [f for f in files if rp.original_of(f) != f]
    assert {rp.original_of(f) for f in files} == set(images) and len(files) == report["pool"]
    assert len(copies) >= 0.8 * 4 * len(images)  # the split counts may cost a few copies, not most
    for f in files:
        a, b = os.stat(os.path.join(out, f)), os.stat(os.path.join(src, rp.original_of(f)))
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)

    # no group straddles two splits, by the product's own scan
    for seed, vf in itertools.product(range(3), (0.0, 0.2)):
        t = scan(out, seed=seed, val_fraction=vf).table.to_pydict()
        sides = defaultdict(set)
        for sid, sp in zip(t["sample_id"], t["split"], strict=True):
            sides[rp.original_of(sid)].add(sp)
        assert all(len(s) == 1 for s in sides.values()), (seed, vf)
        assert {"train", "test"} <= set(t["split"])

    # copies' clean views are the image's augmented views; images keep theirs
    cfg = rp._config("configs/ucm_cpu.yaml", out, over)
    store = open_store(rp.store_location(cfg)[0])
    aug = ["weak_0", "weak_1", "strong_0", "strong_1"]
    tta_sets = defaultdict(list)
    for r, sid in enumerate(store.ids):
        o = src_ids.index(rp.original_of(sid))
        j = rp.copy_index(sid)
        clean = "none" if j == 0 else aug[j - 1]
        assert np.array_equal(store.views["none"][r], feats[clean][o])
        if j == 0:
            assert all(np.array_equal(store.views[v][r], feats[v][o]) for v in feats)
        tta = frozenset(store.views[v][r].tobytes() for v in ("none", "weak_0", "weak_1"))
        tta_sets[rp.original_of(sid)].append(tta)
    assert all(len(set(s)) == len(s) for s in tta_sets.values())  # near-copies, not identical scores


def test_check_groups_refuses_a_leaking_root(tmp_path: Path) -> None:
    src, images = _source(tmp_path)
    img = images[0]
    t = 0
    while True:  # a copy name on the other side of seed 0's split from its image
        name = rp.copy_name(img, 1, t)
        ids = sorted([*images, name])
        labels = np.array([list(SIZES).index(s.split("/")[0]) for s in ids])
        code = _codes(ids, labels, 0, 0.2, 0.0)
        if code[ids.index(name)] != code[ids.index(img)]:
            break
        t += 1
    out = tmp_path / "leaky"
    for s in images:
        (out / s).parent.mkdir(parents=True, exist_ok=True)
        os.link(os.path.join(src, s), out / s)
    os.link(os.path.join(src, img), out / name)
    with pytest.raises(DataError, match="straddle"):
        rp.check_groups(str(out), seeds=1, test_fraction=0.2)


def test_copy_views_and_names() -> None:
    maps = rp.copy_views(2, 4)
    assert [m["none"] for m in maps] == ["none", "weak_0", "weak_1", "strong_0", "strong_1"]
    for m in maps[1:]:
        assert m["none"] not in [m[v] for v in m if v != "none"]  # clean view not reused for training
        assert all(m[f"strong_{i}"].startswith("strong_") for i in range(2))
    assert len({frozenset((m["none"], m["weak_0"], m["weak_1"])) for m in maps}) == 5
    assert rp.original_of("a/b__copy3s12.tif") == "a/b.tif" == rp.original_of(rp.copy_name("a/b.tif", 2))
    with pytest.raises(DataError):
        rp.copy_views(2, 5)


def test_wasted_picks(tmp_path: Path) -> None:
    run = tmp_path / "strategy=margin-seed=0_abc"
    (run / "round_000").mkdir(parents=True)
    (run / "round_001").mkdir()
    pq.write_table(
        pa.table({"sample_id": ["a/y.png", "a/x.png"], "round_added": pa.array([0, 1], pa.int32())}),
        run / "labeled.parquet",
    )
    (run / "round_000" / "query.csv").write_text(
        "sample_id\na/x.png\na/x__copy1.png\na/y__copy2s4.png\nb/z.png\n"
    )
    (run / "round_001" / "query.csv").write_text("sample_id\na/x__copy3.png\nb/w.png\n")
    got = rp.wasted_picks(run)
    assert got.pop(0) == {"round": -1, "batch": 1, "dup_in_batch": 0, "group_labeled": 0, "wasted": 0}
    assert got[0] == {"round": 0, "batch": 4, "dup_in_batch": 1, "group_labeled": 1, "wasted": 2}
    assert got[1] == {"round": 1, "batch": 2, "dup_in_batch": 0, "group_labeled": 1, "wasted": 1}
    summary = rp.waste_summary(tmp_path)
    assert summary["margin"][0]["wasted"] == 2.0


def test_budget_overrides_keep_the_source_label_counts() -> None:
    from hssal_ray.config.loop import label_count

    cfg = rp._config("configs/ucm_cpu.yaml", "unused", [])
    over = rp.budget_overrides(cfg, 5.0, [])
    assert [o.split("=")[0] for o in over] == ["loop.initial_labeled", "query.budget", "loop.total_budget"]
    values = [float(o.split("=")[1]) for o in over]
    # 2% / 8% of UCM's 1,680 training images = the same counts of its x5 pool's 8,400
    assert [label_count(v, 8400) for v in values] == [label_count(0.02, 1680), 34, label_count(0.08, 1680)]
    assert rp.budget_overrides(cfg, 5.0, ["query.budget=0.01"]) == []


def test_long_tail_subset_profile() -> None:
    from benchmarks._redundant import long_tail_subset

    ids = [f"c{c}/x{i:03d}.png" for c in range(5) for i in range(100)]
    labels = np.repeat(np.arange(5), 100)
    kept, per_class = long_tail_subset(ids, labels, 5.0, seed=1)
    assert sorted(per_class.values()) == [20, 30, 45, 67, 100]  # ceil(100 * 5 ** (-i / 4))
    assert kept == [s for s in ids if s in set(kept)]  # the input's order
    for c, n in per_class.items():
        assert sum(s.startswith(f"c{c}/") for s in kept) == n
    assert long_tail_subset(ids, labels, 5.0, seed=1) == (kept, per_class)  # deterministic
    assert long_tail_subset(ids, labels, 5.0, seed=2)[1] != per_class  # the class order is seeded
    assert long_tail_subset(ids, labels, 1.0)[0] == ids
    with pytest.raises(DataError, match="long-tail"):
        long_tail_subset(ids, labels, 0.5)


def test_build_a_long_tailed_root(tmp_path: Path) -> None:
    flags = ("--copies", "0", "--long-tail", "2", "--seeds", "2")
    _, images, feats, src_ids, out, over, report = _build(tmp_path, "lt", *flags)
    assert report["long_tail"] == 2 and report["images_by_class"] == {"road": 12, "farm": 8, "lake": 6}
    files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.png"))
    assert len(files) == report["pool"] == 26 and set(files) <= set(images)
    store = open_store(rp.store_location(rp._config("configs/ucm_cpu.yaml", out, over))[0])
    for r, sid in enumerate(store.ids):  # every kept image keeps its own views
        assert np.array_equal(store.views["none"][r], feats["none"][src_ids.index(sid)])
    assert "2:1 long-tailed" in (tmp_path / "report.md").read_text()


def test_class_subset_keeps_every_image_of_a_seeded_few_classes() -> None:
    from benchmarks._redundant import class_subset

    ids = [f"c{c}/x{i:03d}.png" for c in range(6) for i in range(10)]
    labels = np.repeat(np.arange(6), 10)
    kept, classes = class_subset(ids, labels, 3, seed=1)
    assert len(classes) == 3 and classes == sorted(classes)
    assert kept == [s for s, lab in zip(ids, labels, strict=True) if lab in classes]  # all of each, in order
    assert class_subset(ids, labels, 3, seed=1) == (kept, classes)  # deterministic
    assert {tuple(class_subset(ids, labels, 3, seed=s)[1]) for s in range(6)} != {tuple(classes)}  # seeded
    for bad in (1, 7):
        with pytest.raises(DataError, match="--classes"):
            class_subset(ids, labels, bad)


def test_build_a_few_class_root(tmp_path: Path) -> None:
    _, images, feats, src_ids, out, over, report = _build(tmp_path, "fc", "--copies", "0", "--classes", "2")
    assert len(report["classes"]) == 2 and set(report["classes"]) < {"road", "farm", "lake"}
    files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.png"))
    assert files == sorted(f for f in images if f.split("/")[0] in report["classes"])
    assert len(files) == report["pool"]
    store = open_store(rp.store_location(rp._config("configs/ucm_cpu.yaml", out, over))[0])
    for r, sid in enumerate(store.ids):
        assert np.array_equal(store.views["none"][r], feats["none"][src_ids.index(sid)])
    assert "2 of its classes" in (tmp_path / "report.md").read_text()


def test_a_seed_count_whose_copies_cannot_be_placed_is_refused_before_the_search() -> None:
    ids = [f"c{c}/img{i:03d}.png" for c in range(2) for i in range(60)]
    labels = np.repeat(np.arange(2), 60)
    codes = np.stack([_codes(ids, labels, s, 0.2, 0.2) for s in range(20)])
    few, many = placeable_share(codes[:3], 0.2, 0.2, 1 << 16), placeable_share(codes, 0.2, 0.2, 1 << 16)
    assert few > 0.99 and many < 0.5  # geometric in the seeds
    # the share is what the search finds: 3 seeds place (nearly) every copy
    plan = plan_copies(ids, labels, copies=1, seeds=3, test_fraction=0.2)
    assert sum(len(v) for v in plan.values()) >= 0.9 * len(ids)
    with pytest.raises(DataError, match=r"--seeds 20: .* use --seeds \d+ or fewer"):
        plan_copies(ids, labels, copies=1, seeds=20, test_fraction=0.2)
