"""A pool with the redundancy of a real archive: every image present with near-copies, the product run on it.

    python -m benchmarks.redundant_pool build --data ../shared/data/ucm --copies 4 --seeds 5 \\
        --out runs/redundant/ucm_x5
    python -m benchmarks.redundant_pool run --root runs/redundant/ucm_x5 --seeds 3 [key=value ...]

``build`` writes a new ImageFolder root of hard links (no image byte is copied): every image of
``--data``, plus ``--copies`` near-copies of each, ``<class>/<stem>__copy<j><ext>`` (``__copy<j>s<t>``
when the plain name would put the copy on the other side of a split from its image, see below). It
then writes that root's frozen-path embedding store into ``data.embedding_cache`` under the key the
loop computes, from the completed store of ``--data`` (nothing is encoded): an image keeps its own
views; copy ``j``'s clean view is the image's ``j``-th augmented view (``weak_0, weak_1, strong_0,
strong_1``: real encoded augmentations of the same scene), its weak views are chosen among the
image's other views so that no two members of a group share the set of views the loop averages for
scoring and evaluation (clean + weak: near-duplicate uncertainties, not identical ones), and its
strong views are the image's strong views other than its clean one.

Leak-free splits. The loop splits each class by ranking ``blake2b(f"{seed}:{id}")``
(``hssal_ray.data.catalog.scan``), so a copy's split follows its name. Every image keeps the split
it has in ``--data``, for every seed in ``range(--seeds)`` and ``data.val_fraction`` 0 and 0.2: copy
names are salted until they rank on their image's side of each split, and the copies per image are
chosen (an integer program) so that each side holds exactly the ``round(f * n)`` members the split
takes (when 20% of a class is not a whole number of groups, a few images get fewer copies). The
finished root is then scanned with the product's own ``scan()`` for every seed and both settings,
and the build fails if any group (image + its copies) straddles two splits. Test groups carry
copies too: the test split holds the same images as on ``--data``, each with its near-copies.

``run`` is ``benchmarks.label_efficiency`` on that root (methods ``hssal hssal_flat ssl_margin
ssl_entropy ssl_random``, tag ``redundant_pool``), refusing to start when the store is missing (the
runs would encode). Its budgets are by default the profile's fractions of the *source's* images
(the profile's fractions divided by pool / images: the same label counts as on ``--data``;
``--budgets-of pool`` keeps them fractions of the pool). It then reads each trial's
``round_XXX/query.csv`` and ``labeled.parquet`` and writes ``<tag>.redundancy.{md,json}``: per
method and batch, the wasted picks (in the same group as another pick of the batch, or of a group
already labeled), and the accuracy table by label count.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line
from benchmarks._redundant import (
    VAL_FRACTIONS,
    accuracy_markdown,
    check_groups,
    class_subset,
    copy_index,
    copy_name,
    copy_views,
    long_tail_subset,
    original_of,
    plan_copies,
    waste_markdown,
    waste_summary,
    wasted_picks,
)
from hssal_ray import _io
from hssal_ray.errors import DataError

__all__ = [
    "original_of",
    "copy_index",
    "copy_name",
    "copy_views",
    "plan_copies",
    "check_groups",
    "wasted_picks",
    "link_root",
    "store_location",
    "write_store",
    "main",
]

log = logging.getLogger("benchmarks.redundant_pool")

MARKER = ".redundant_pool.json"


# ------------------------------------------------------------------------------ the root and its store


def link_root(src: str, out: str, plan: dict[str, dict[int, str]], meta: dict[str, Any]) -> None:
    """Hard-link every image of ``plan`` and its copies under ``out`` (built beside it, then renamed).

    Raises:
        DataError: ``out`` exists and was not made by this tool, or ``src`` and ``out`` are on two
            file systems (hard links cannot cross them; image bytes are never copied).
    """
    if os.path.lexists(out):
        if not os.path.isfile(os.path.join(out, MARKER)):
            raise DataError(
                f"{out} exists and was not built by benchmarks.redundant_pool: choose another --out"
            )
        shutil.rmtree(out)
    tmp = f"{out.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for image, copies in plan.items():
            for name in (image, *copies.values()):
                dst = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(os.path.join(src, image), dst)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(meta, f, indent=2)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.EXDEV:
            raise DataError(
                f"cannot hard-link {src} into {out}: another file system; put --out beside it"
            ) from e
        raise


def _config(profile: str, root: str, overrides: list[str]) -> Any:
    from hssal_ray.config import load_config

    return load_config(profile, [f"data.root={root}", *overrides])


def store_location(cfg: Any) -> tuple[str, int]:
    """Where the loop looks for ``cfg``'s embedding store, and its row count."""
    from benchmarks._product import store_location as locate

    where = locate(cfg) if cfg.data.embedding_cache else None
    if where is None:  # the frozen learner's store, in a cache the pools share
        raise DataError("the profile must use ssl.finetune=frozen with a data.embedding_cache")
    path, _, n = where
    return path, n


def write_store(src_cfg: Any, new_cfg: Any) -> str:
    """The new root's embedding store, from the source root's complete store (see the module docstring).

    Returns:
        The store's path.

    Raises:
        DataError: The source store is missing or incomplete, or a path holds a store not made here.
    """
    from hssal_ray.data.catalog import scan
    from hssal_ray.frozen.store import STORE_VERSION, open_store, read_rows, view_names, write_arrays

    k = new_cfg.frozen.embed_views
    views = view_names(k)
    src_path, src_rows = store_location(src_cfg)
    if not os.path.isfile(os.path.join(src_path, "meta.json")):
        raise DataError(
            f"no embedding store of {src_cfg.data.root} at {src_path}: run the profile on it once first"
        )
    src = open_store(src_path, views=views, rows=src_rows)
    path, n = store_location(new_cfg)
    meta_file = os.path.join(path, "meta.json")
    if os.path.exists(path):
        if not (os.path.isfile(meta_file) and "redundant_pool" in json.loads(Path(meta_file).read_text())):
            raise DataError(
                f"{path} holds an embedding store not made by benchmarks.redundant_pool: remove it"
            )
        shutil.rmtree(path)  # also drops k-NN graphs built on an earlier version of it
    ids = scan(new_cfg.data.root, test_fraction=new_cfg.data.test_fraction).table.column("sample_id")
    names = ids.to_pylist()
    rows = src.rows_of([original_of(s) for s in names])
    j = np.array([copy_index(s) for s in names])
    mapping = copy_views(k, int(j.max(initial=0)))

    def blocks():
        for s in range(0, n, 4096):
            r, jj = rows[s : s + 4096], j[s : s + 4096]
            block = {v: np.empty((len(r), src.dim), np.float16) for v in views}
            for c in np.unique(jj):
                sel = jj == c
                for v in views:
                    block[v][sel] = read_rows(src.views[mapping[c][v]], r[sel])
            yield block

    meta = {
        "key": os.path.basename(path),
        "version": STORE_VERSION,
        "model": new_cfg.ssl.model,
        "weights": new_cfg.ssl.weights,
        "image_size": new_cfg.data.image_size,
        "views": list(views),
        "rows": n,
        "chunks": -(-n // 4096),
        "complete": True,
        "redundant_pool": {"source_store": src_path, "copy_views": mapping},
    }
    write_arrays(path, ids, blocks(), views, meta=meta)
    return path


# ------------------------------------------------------------------------------ commands


def build(args: argparse.Namespace) -> dict[str, Any]:
    from hssal_ray.data.catalog import scan

    src = os.path.abspath(args.data)
    out = os.path.abspath(args.out)
    cfg = _config(args.profile, src, args.overrides)
    copy_views(cfg.frozen.embed_views, args.copies)  # refuses more copies than stored views, before any work
    tf = cfg.data.test_fraction
    cat = scan(src, test_fraction=tf, seed=0)
    t = cat.table.to_pydict()
    ids, labels = t["sample_id"], np.array(t["label"])
    meta: dict[str, Any] = {"source": src, "copies": args.copies, "seeds": args.seeds, "test_fraction": tf}
    # subsets of the images first, then the copies of what is kept (the kept ids keep the scan's order)
    if args.classes:  # a few-class version: every image of the kept classes
        kept_ids, kept_classes = class_subset(ids, labels, args.classes)
        ids, labels = kept_ids, labels[np.isin(ids, kept_ids)]
        meta.update(classes=[cat.class_names[c] for c in kept_classes])
    if args.long_tail > 1:
        kept_ids, kept = long_tail_subset(ids, labels, args.long_tail)
        ids, labels = kept_ids, labels[np.isin(ids, kept_ids)]
        meta.update(
            long_tail=args.long_tail, images_by_class={cat.class_names[c]: n for c, n in kept.items()}
        )
    plan = plan_copies(ids, labels, args.copies, args.seeds, tf)
    got = np.array([len(p) for p in plan.values()])
    meta.update(images=len(plan), pool=len(plan) + int(got.sum()))
    link_root(src, out, plan, meta)
    checked = check_groups(out, args.seeds, tf)
    path = write_store(cfg, _config(args.profile, out, args.overrides))
    drift = {c: f - tf for c, f in checked["test_fraction_by_class"].items()}
    img = checked["image_test_fraction_by_class"]
    return {
        **meta,
        "root": out,
        "images": len(plan),
        "copies_made": int(got.sum()),
        "images_by_copies": {int(c): int((got == c).sum()) for c in np.unique(got)},
        "pool": checked["pool"],
        "store": path,
        "checked": f"scan() of the root, seeds 0..{args.seeds - 1} x val_fraction "
        f"{list(VAL_FRACTIONS)}: no group straddles two splits",
        "test_fraction_by_class": checked["test_fraction_by_class"],
        "test_fraction_max_drift": float(max(abs(v) for v in drift.values())),
        "image_test_fraction_by_class": img,
        "image_test_fraction_range": [min(min(v) for v in img.values()), max(max(v) for v in img.values())],
    }


def build_markdown(r: dict[str, Any]) -> str:
    lo, hi = r["image_test_fraction_range"]
    tail = f", {r['long_tail']:g}:1 long-tailed" if r.get("long_tail") else ""
    if r.get("classes"):
        tail = f", {len(r['classes'])} of its classes{tail}"
    lines = [
        f"# Redundant pool: {r['source']}{tail}, "
        + (f"with up to {r['copies']} near-copies per image" if r["copies"] else "no near-copies"),
        "",
        f"- command: `{r['command']}`",
        f"- root: `{r['root']}` (hard links)",
        f"- store: `{r['store']}` (from the source's store: nothing encoded)",
        f"- {r['images']} images + {r['copies_made']} copies = pool of {r['pool']} "
        f"(images by copies held: {r['images_by_copies']})",
        f"- {r['checked']}",
        *([f"- classes kept (seeded): {', '.join(r['classes'])}"] if r.get("classes") else []),
        *(
            [f"- images kept per class (head to tail, seeded order): {r['images_by_class']}"]
            if r.get("long_tail")
            else []
        ),
        f"- build: {r.get('cpu_s', float('nan')):.0f} CPU-seconds (this process)",
        f"- test fraction of the root per class: max drift {r['test_fraction_max_drift']:+.4f} "
        f"from {r['test_fraction']}; share of each class's images in test, any seed: {lo:.3f}-{hi:.3f}",
    ]
    return "\n".join(lines) + "\n"


def budget_overrides(cfg: Any, factor: float, overrides: list[str]) -> list[str]:
    """The profile's budget fractions divided by ``factor`` (pool / images): the same label counts as
    on the source dataset. None when the budgets are counts or are overridden."""
    from hssal_ray.config.loop import budget_unit

    keys = ("loop.initial_labeled", "query.budget", "loop.total_budget")
    if budget_unit(cfg.loop) != "fraction" or any(o.split("=", 1)[0] in keys for o in overrides):
        return []
    values = (cfg.loop.initial_labeled, cfg.query.budget, cfg.loop.total_budget)
    return [f"{k}={v / factor!r}" for k, v in zip(keys, values, strict=True)]


def run(args: argparse.Namespace) -> int:
    from benchmarks import label_efficiency

    root = os.path.abspath(args.root)
    marker = os.path.join(root, MARKER)
    if not os.path.isfile(marker):
        raise DataError(f"{root} was not built by `python -m benchmarks.redundant_pool build`")
    meta = json.loads(Path(marker).read_text())
    if args.seeds > meta["seeds"]:
        raise DataError(
            f"{root} was checked leak-free for {meta['seeds']} seeds only: build it with --seeds {args.seeds}"
        )
    path, _ = store_location(_config(args.profile, root, args.overrides))
    if not os.path.isfile(os.path.join(path, "meta.json")):
        raise DataError(f"no embedding store for {root} at {path}: run `build` again (the runs would encode)")
    parts = [Path(meta["source"]).name.upper()]
    if meta.get("classes"):
        parts.append(f"{len(meta['classes'])} classes")
    if meta.get("long_tail"):
        parts.append(f"{meta['long_tail']:g}:1 long-tailed")
    if meta["copies"]:
        parts.append(f"x{meta['copies'] + 1} near-copies")
    name = args.dataset_name or " ".join(parts)
    over = [*args.overrides]
    if args.budgets_of == "images":
        over += budget_overrides(_config(args.profile, root, over), meta["pool"] / meta["images"], over)
    argv = [
        "--profile",
        args.profile,
        "--data",
        root,
        "--dataset-name",
        name,
        "--tag",
        args.tag,
        "--seeds",
        str(args.seeds),
        "--out",
        args.out,
        "--run-dir",
        args.run_dir,
        "--concurrent",
        str(args.concurrent),
        *over,
        "--methods",
        *args.methods,
    ]
    if args.val_fraction:
        argv[:0] = ["--val-fraction", str(args.val_fraction)]
    rc = label_efficiency.main(argv)
    if rc:
        return rc
    if not meta["copies"]:  # nothing to waste picks on: the label-efficiency report is the result
        return rc
    method_of = {s: m for m, s in label_efficiency.SSL_METHODS.items()}
    wasted = waste_summary(Path(args.run_dir).resolve() / args.tag / f"{args.tag}_ssl")
    summary = {method_of.get(s, s): v for s, v in wasted.items()}
    out = Path(args.out)
    result = json.loads((out / f"{args.tag}.json").read_text())
    text = waste_markdown(summary, name) + "\n" + accuracy_markdown(result)
    _io.atomic_write_json(str(out / f"{args.tag}.redundancy.json"), {"wasted": summary})
    _io.atomic_write_text(str(out / f"{args.tag}.redundancy.md"), text)
    print(text)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.redundant_pool", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="the hard-linked root with near-copies and its embedding store")
    b.add_argument("--data", required=True, help="source ImageFolder root (its store must be complete)")
    b.add_argument(
        "--copies", type=int, default=4, help="near-copies per image (at most 2 x frozen.embed_views)"
    )
    b.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="split seeds checked leak-free: range(seeds); the copies' names are searched for every seed, "
        "so the cost grows about 2.5x a seed (UCM, SIRI-WHU: at most 9)",
    )
    b.add_argument(
        "--long-tail",
        type=float,
        default=1.0,
        help="keep a R:1 long-tailed subset of the images first (class i of C keeps R**(-i/(C-1)))",
    )
    b.add_argument(
        "--classes",
        type=int,
        default=0,
        help="keep a seeded random N of the classes first (every image of each): a few-class version",
    )
    b.add_argument(
        "--out", required=True, help="the new root (beside the source's file system, not in the repo)"
    )
    b.add_argument(
        "--report",
        default=None,
        help="writes REPORT.json/.md (default: results/redundant_pool.build.<out name>)",
    )
    r = sub.add_parser(
        "run", help="benchmarks.label_efficiency on a built root, then the wasted-picks report"
    )
    r.add_argument("--root", required=True)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--dataset-name", default=None)
    r.add_argument("--tag", default="redundant_pool")
    r.add_argument("--out", default="benchmarks/results")
    r.add_argument("--run-dir", default="runs/benchmarks")
    r.add_argument("--concurrent", type=int, default=2)
    r.add_argument("--val-fraction", type=float, default=0.0)
    r.add_argument(
        "--budgets-of",
        choices=("images", "pool"),
        default="images",
        help="budget fractions of the source's images (default: same label counts) or of the pool",
    )
    r.add_argument(
        "--methods", nargs="+", default=["hssal", "hssal_flat", "ssl_margin", "ssl_entropy", "ssl_random"]
    )
    for q in (b, r):
        q.add_argument("--profile", default="configs/ucm_cpu.yaml")
        q.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides (before --methods)"
        )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "run":
            return run(args)
        cpu = time.process_time()
        result = build(args)
        result["cpu_s"] = round(time.process_time() - cpu, 1)
        result["command"] = command_line("benchmarks.redundant_pool", argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.report is None:
        args.report = f"benchmarks/results/redundant_pool.build.{Path(args.out).name}"
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_json(args.report + ".json", result)
    _io.atomic_write_text(args.report + ".md", build_markdown(result))
    print(build_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
