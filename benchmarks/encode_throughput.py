"""Encode throughput: the frozen path's one-time encode with the backbone in NCHW, in channels_last, and
in channels_last under bfloat16 autocast, each measured on the product's own embedding store.

    python -m benchmarks.encode_throughput --data ../shared/data/ucm --per-class 10

Copies the first ``--per-class`` images of each class folder of ``--data`` into ``--work-dir`` (the
scan rejects links that leave the root), then, for each setting, builds the product's store from
scratch (:func:`hssal_ray.frozen.store.ensure_store`: Ray Data decode and augmentation, the
:class:`hssal_ray.frozen.encode.Encoder` actor pool) with the profile's views and input size, timed as
a user sees it (actor start-up included). The settings take turns, ``--repeats`` times, so each sees
the same load; the ratios are per repeat, then their median. Then the backbone alone: the product's
``Encoder`` called in this process on one batch of decoded views (``ssl.eval_batch_size`` images,
every view), ``--repeats`` times after a warm-up. Each setting's stored features are compared with
the reference's (the first setting: NCHW fp32 unless ``--settings`` names others), value by value:
the share of fp16 values that differ, the largest difference and the lowest row cosine.

Settings (config overrides): ``nchw fp32`` = ``ssl.channels_last=false ssl.amp=none`` (the encode
before channels_last reached the encoder); ``channels_last fp32`` = ``ssl.channels_last=true
ssl.amp=none`` (the default); ``channels_last bf16`` = ``ssl.channels_last=true ssl.amp=bf16``
(bfloat16 autocast on the CPU, which also trains the frozen head under it; its store has its own key).
``--actors N ...`` adds the default setting with ``resources.encode_actors=N`` (the Ray runtime gets the
largest N plus one CPUs), and every pair of stores is checked for the same values bit for bit:

    python -m benchmarks.encode_throughput --per-class 50 --settings "channels_last fp32" --actors 2 \
        --name encode_actors
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks._common import md_table, setup_logging, start_local_ray, write_result

log = logging.getLogger("benchmarks.encode_throughput")

SETTINGS: dict[str, tuple[str, ...]] = {
    "nchw fp32": ("ssl.channels_last=false", "ssl.amp=none"),
    "channels_last fp32": ("ssl.channels_last=true", "ssl.amp=none"),
    "channels_last bf16": ("ssl.channels_last=true", "ssl.amp=bf16"),
}


def subset(data: Path, per_class: int, work: Path) -> Path:
    """The first ``per_class`` images (by name) of each class folder of ``data``, copied under ``work``."""
    from hssal_ray.data.catalog import IMAGE_EXTENSIONS

    out = work / "images"
    shutil.rmtree(out, ignore_errors=True)
    classes = sorted(d for d in data.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"{data}: no class folders")
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)[:per_class]
        (out / d.name).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, out / d.name / f.name)
    return out


def settings(actors: Sequence[int], names: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """The settings to run: ``names`` of :data:`SETTINGS` (all when None), then the default setting with
    ``resources.encode_actors`` at each of ``actors``. The first is the reference of the comparisons."""
    keep = list(SETTINGS) if names is None else list(dict.fromkeys(names))
    unknown = sorted(set(keep) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; known: {list(SETTINGS)}")
    out = {n: SETTINGS[n] for n in keep}
    for a in actors:
        out[f"channels_last fp32, {a} actor(s)"] = (
            *SETTINGS["channels_last fp32"],
            f"resources.encode_actors={a}",
        )
    if not out:
        raise SystemExit("nothing to run: name --settings or --actors")
    return out


def config(profile: str, root: Path, cache: Path, overrides: Sequence[str]) -> Any:
    from hssal_ray.config import load_config

    return load_config(profile, [f"data.root={root}", f"data.embedding_cache={cache}", *overrides])


def same_values(stores: dict[str, Any]) -> dict[str, list[str]]:
    """For each setting, the other settings whose stores hold the same fp16 values bit for bit."""
    out: dict[str, list[str]] = {s: [] for s in stores}
    names = list(stores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = stores[a].views, stores[b].views
            if set(va) == set(vb) and all(
                np.array_equal(np.asarray(va[v][:]), np.asarray(vb[v][:])) for v in va
            ):
                out[a].append(b)
                out[b].append(a)
    return out


def encode_once(cfg: Any, catalog: Any, run_dir: Path) -> tuple[Any, float]:
    """The product's store for ``cfg`` from an empty cache; (store, wall seconds)."""
    from hssal_ray.frozen.store import ensure_store

    shutil.rmtree(cfg.data.embedding_cache, ignore_errors=True)
    t0 = time.perf_counter()
    store = ensure_store(cfg, catalog, str(run_dir), progress=lambda line: None)
    return store, time.perf_counter() - t0


def decoded_batch(cfg: Any, catalog: Any, run_dir: Path) -> dict[str, np.ndarray]:
    """One batch (``ssl.eval_batch_size`` images, every stored view) through the product's decode
    stream; the settings compared here do not change the decode, so every setting gets this batch."""
    from hssal_ray.data.pipeline import stream_for
    from hssal_ray.frozen.store import view_names

    n = min(cfg.ssl.eval_batch_size, catalog.table.num_rows)
    part = catalog.table.slice(0, n).select(["sample_id", "source", "row", "label"])
    part = part.append_column("aug_seed", pa.array(np.arange(n, dtype=np.int64)))
    views = view_names(cfg.frozen.embed_views)
    ds = stream_for(cfg, part, root=catalog.root, kind=catalog.kind, views=views, run_dir=str(run_dir))
    return ds.take_batch(batch_size=n, batch_format="numpy")


def backbone_rate(cfg: Any, batch: dict[str, np.ndarray], repeats: int) -> float:
    """Images a second of the product's ``Encoder`` alone (every view) on ``batch``, median of
    ``repeats`` calls."""
    from hssal_ray.config import config_to_dict
    from hssal_ray.frozen.encode import Encoder
    from hssal_ray.frozen.store import view_names

    n = len(batch["sample_id"])
    encoder = Encoder(config_to_dict(cfg), view_names(cfg.frozen.embed_views))
    encoder(batch)  # warm-up: oneDNN picks its kernels on the first call
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoder(batch)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def compare(store: Any, ref: Any) -> dict[str, float]:
    """How ``store``'s features differ from ``ref``'s over every view, value by value."""
    differ, total, worst, cos_min = 0, 0, 0.0, 1.0
    for v in ref.views:
        a = np.asarray(ref.views[v][:])
        b = np.asarray(store.views[v][:])
        differ += int(np.count_nonzero(a != b))
        total += a.size
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        worst = max(worst, float(np.abs(a32 - b32).max()))
        cos = (a32 * b32).sum(1) / np.maximum(
            np.linalg.norm(a32, axis=1) * np.linalg.norm(b32, axis=1), 1e-12
        )
        cos_min = min(cos_min, float(cos.min()))
    return {"values_differ": differ / max(total, 1), "max_abs_diff": worst, "min_row_cosine": cos_min}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.encode_throughput", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", default="../shared/data/ucm", help="a folder of class folders")
    p.add_argument("--per-class", type=int, default=10, help="images of each class to encode")
    p.add_argument("--profile", default="configs/ucm_cpu.yaml")
    p.add_argument(
        "--repeats", type=int, default=2, help="turns of every setting (and backbone-alone repeats)"
    )
    p.add_argument("--work-dir", default="runs/encode_throughput")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="encode_throughput")
    p.add_argument(
        "--settings", nargs="*", default=None, help=f"which of {list(SETTINGS)} to run (default all)"
    )
    p.add_argument(
        "--actors",
        type=int,
        nargs="*",
        default=[],
        help="also run the default setting with resources.encode_actors at each of these (the runtime gets "
        "the largest plus one CPUs: a CPU pool leaves one to Ray Data)",
    )
    args = p.parse_args(argv)
    chosen = settings(args.actors, args.settings)
    setup_logging()
    work = Path(args.work_dir)
    root = subset(Path(args.data), args.per_class, work)
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfgs = {s: config(args.profile, root, work / f"cache_{i}", o) for i, (s, o) in enumerate(chosen.items())}
    reference = next(iter(chosen))
    ref_cfg = cfgs[reference]
    cpus = ref_cfg.resources.num_cpus or len(os.sched_getaffinity(0))
    start_local_ray(num_cpus=max([cpus, *(a + 1 for a in args.actors)]))
    from hssal_ray.data.catalog import scan

    catalog = scan(str(root), test_fraction=ref_cfg.data.test_fraction, seed=ref_cfg.seed)
    images = catalog.table.num_rows

    walls: dict[str, list[float]] = {s: [] for s in chosen}
    stores: dict[str, Any] = {}
    for rep in range(args.repeats):
        for s, cfg in cfgs.items():
            stores[s], secs = encode_once(cfg, catalog, run_dir)
            walls[s].append(secs)
            log.info("repeat %d, %s: %d images in %.1f s", rep + 1, s, images, secs)
    batch = decoded_batch(ref_cfg, catalog, run_dir)
    rates = {s: backbone_rate(cfg, batch, max(args.repeats, 3)) for s, cfg in cfgs.items()}

    views = len(stores[reference].views)
    same = same_values(stores)
    rows = []
    for s in chosen:
        speedup = [walls[reference][r] / walls[s][r] for r in range(args.repeats)]
        diff = compare(stores[s], stores[reference])
        rows.append(
            {
                "setting": s,
                "overrides": " ".join(chosen[s]),
                "encode_wall_s": walls[s],
                "encode_img_s": images / statistics.median(walls[s]),
                "encode_speedup": statistics.median(speedup),
                "backbone_img_s": rates[s],
                "backbone_speedup": rates[s] / rates[reference],
                **diff,
                "same_values_as": same[s],
            }
        )
    table = md_table(
        [
            {
                **r,
                "encode wall s (each repeat)": " / ".join(f"{w:.1f}" for w in r["encode_wall_s"]),
                "encode img/s": r["encode_img_s"],
                "encode speed-up": r["encode_speedup"],
                "backbone img/s": r["backbone_img_s"],
                "backbone speed-up": r["backbone_speedup"],
                "fp16 values that differ": f"{100 * r['values_differ']:.2f}%",
                "largest difference": f"{r['max_abs_diff']:.2g}",
                "lowest row cosine": f"{r['min_row_cosine']:.7f}",
                "bit for bit as": ", ".join(r["same_values_as"]) or "-",
            }
            for r in rows
        ],
        [
            "setting",
            "encode wall s (each repeat)",
            "encode img/s",
            "encode speed-up",
            "backbone img/s",
            "backbone speed-up",
            "fp16 values that differ",
            "largest difference",
            "lowest row cosine",
            "bit for bit as",
        ],
    )
    md = (
        f"{images} images ({args.per_class} of each class of `{args.data}`), {views} views each "
        f"(`frozen.embed_views={ref_cfg.frozen.embed_views}`), {ref_cfg.data.image_size} px, "
        f"`{ref_cfg.ssl.model}`, "
        f"profile `{args.profile}`. *encode*: the product's store from an empty cache (Ray Data decode + "
        "augmentation + the Encoder actor pool, start-up included), images a second of wall time; speed-up: "
        f"median over repeats of the reference's ({reference}) wall time over this setting's, in the same "
        "repeat. "
        f"*backbone*: the Encoder alone on one decoded batch ({len(batch['sample_id'])} images "
        f"x {views} views), median of the calls after a warm-up. Differences: every stored fp16 value "
        "against the reference store's; *bit for bit as*: the settings whose stores hold the same values. "
        f"Ray runtime: {max([cpus, *(a + 1 for a in args.actors)])} CPUs on a host with "
        f"{len(os.sched_getaffinity(0))} cores.\n\n"
        f"{table}\n"
    )
    write_result(
        args.name,
        {"images": images, "views": views, "reference": reference, "settings": chosen, "rows": rows},
        md,
        module="benchmarks.encode_throughput",
        out_dir=args.out,
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
