"""Benchmarks that measure the product: a Ray Tune grid of real ``hssal_ray.loop`` runs, then their metrics.

Each benchmark describes its arms as a grid over config keys; :func:`run_grid` turns that into a sweep
config, runs it with :func:`hssal_ray.tune.search.run_sweep` (every trial is the loop of
``python -m hssal_ray.loop``: same cold start, training, scoring, query and evaluation code), and
returns each trial's ``metrics.jsonl`` rows. Nothing here trains, scores or evaluates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hssal_ray import _io

__all__ = [
    "add_product_arguments",
    "start",
    "base_config",
    "pre_encode",
    "store_identity",
    "store_location",
    "store_fingerprint",
    "run_grid",
    "stratified_subset",
    "labels_setting",
]

log = logging.getLogger("benchmarks")


def stratified_subset(y: Any, fraction: float, seed: int) -> Any:
    """Sorted row indices: ``round(fraction * n)`` seeded random rows, spread over the classes.

    Every class gets ``floor(fraction * n_c)`` rows (at least one); the rows left to reach the total
    go, one each, to the classes with the largest remainders (ties broken by the seed).
    """
    import numpy as np

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 0x5EED])
    classes, counts = np.unique(y, return_counts=True)
    share = fraction * counts
    take = np.maximum(1, np.floor(share)).astype(np.int64)
    extra = max(0, round(fraction * len(y)) - int(take.sum()))
    order = np.lexsort((rng.random(len(classes)), -(share - np.floor(share))))  # largest remainder first
    take[order[:extra]] += 1
    take = np.minimum(take, counts)
    picked = [
        rng.choice(np.flatnonzero(y == c), size=int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def labels_setting(base: Any, fraction: float, n_train: int) -> int | float:
    """``fraction`` of the training split as the profile writes its budgets: a fraction when they
    are fractions, else the count (the config refuses a mix of the two)."""
    from hssal_ray.config.loop import budget_unit, label_count

    return float(fraction) if budget_unit(base.loop) == "fraction" else label_count(float(fraction), n_train)


def budgets_as_in_test(cfg: Any) -> list[str]:
    """Overrides that fix the budgets at the label counts a test run of ``cfg`` queries.

    A test run applies the budget fractions to the whole training split; a validation run to the
    training split less its validation carve, i.e. smaller batches (UCM 2%: 27 instead of 34), so an
    option that depends on the batch size can act differently on the two (``[]`` when the budgets
    are counts already).
    """
    from hssal_ray.config.loop import budget_unit, label_count
    from hssal_ray.data.catalog import scan

    if budget_unit(cfg.loop) != "fraction":
        return []
    d = cfg.data
    n = scan(d.root, test_fraction=d.test_fraction, seed=0, val_fraction=0.0).split_table("train").num_rows
    keys = {
        "loop.initial_labeled": cfg.loop.initial_labeled,
        "query.budget": cfg.query.budget,
        "loop.total_budget": cfg.loop.total_budget,
    }
    return [f"{k}={label_count(v, n)}" for k, v in keys.items()]


def add_product_arguments(p: Any, tag: str) -> None:
    """The arguments every product benchmark takes (profile, data, seeds, validation split, where)."""
    p.add_argument("--profile", default="configs/ucm_cpu.yaml", help="loop config every trial runs")
    p.add_argument("--data", default="../shared/data/ucm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val-fraction", type=float, default=0.0, help="evaluate on a validation split of train")
    p.add_argument(
        "--val-budgets",
        choices=("fraction", "test"),
        default="fraction",
        help="with --val-fraction: the profile's budget fractions of the smaller carved training pool "
        "(default), or the test runs' label counts, so that what depends on the batch size or on labels "
        "per class (HAL's K1, pick: auto's switch) acts as it will on the test split",
    )
    p.add_argument("--run-dir", default="runs/benchmarks", help="where the sweeps' run directories go")
    p.add_argument("--tag", default=tag)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every trial")


def start(args: Any) -> tuple[Any, str, float, int]:
    """Logging, Ray, the base config and the shared store; returns (base, run_dir, encode_s, n_train)."""
    from pathlib import Path

    from benchmarks._common import set_ray_env, setup_logging
    from hssal_ray._ray import ensure_ray
    from hssal_ray.data.catalog import scan

    setup_logging()
    set_ray_env()
    over = [f"data.root={args.data}", *args.overrides]
    if args.val_fraction > 0:
        if args.val_budgets == "test":
            over += budgets_as_in_test(base_config(args.profile, over))
        over += [f"data.val_fraction={args.val_fraction}", "data.eval_split=val"]
    base = base_config(args.profile, over)
    ensure_ray(type(base.resources)(num_cpus=2 * args.concurrent))
    run_dir = str(Path(args.run_dir).resolve() / args.tag)
    encode_s = pre_encode(base, run_dir)
    cat = scan(
        base.data.root, test_fraction=base.data.test_fraction, seed=0, val_fraction=base.data.val_fraction
    )
    return base, run_dir, encode_s, cat.split_table("train").num_rows


def base_config(path: str, overrides: Sequence[str]) -> Any:
    """The loop config the benchmark starts from (a profile YAML + overrides)."""
    from hssal_ray.config import load_config

    return load_config(path, list(overrides))


def pre_encode(cfg: Any, run_dir: str) -> float:
    """What the trials' learner shares (the frozen path's embedding store), built once before the
    trials as the product's sweep builds it (:func:`hssal_ray.tune.search.prepare_shared_inputs`, which
    :func:`run_grid` calls again and then finds done); returns seconds (0 when nothing is shared)."""
    import time

    from hssal_ray._ray import ensure_ray
    from hssal_ray.tune.search import prepare_shared_inputs

    ensure_ray(cfg.resources)
    t0 = time.perf_counter()
    if not prepare_shared_inputs(cfg, run_dir, lambda line: log.info("%s", line)):
        return 0.0
    return time.perf_counter() - t0


def store_fingerprint(store: Any, block_rows: int = 65_536) -> str:
    """A hash of what a frozen-path store holds: its ids, which rows are missing and every stored view's
    float16 values, in that order (20 hex digits). Two results whose stores share it ran on the same
    embeddings bit for bit; the store *key* only says the same images, encoder and settings went in,
    and an encode on another CPU can give other last bits under the same key.
    """
    import hashlib

    import numpy as np

    h = hashlib.blake2b(digest_size=10)
    for buf in store.id_array.buffers():
        if buf is not None:
            h.update(memoryview(buf))
    h.update(np.ascontiguousarray(store.missing, dtype=np.bool_).tobytes())
    for name in sorted(store.views):
        view = store.views[name]
        h.update(f"{name}:{view.dtype.str}:{view.shape}".encode())
        for s in range(0, len(view), block_rows):  # memory-mapped: a block at a time
            h.update(np.ascontiguousarray(view[s : s + block_rows]).tobytes())
    return h.hexdigest()


def store_location(cfg: Any, run_dir: str = "") -> tuple[str, str, int] | None:
    """Where the loop looks for ``cfg``'s embedding store: ``(path, key, rows)``, or None when the
    learner shares no store (``run_dir``: where it goes without a ``data.embedding_cache``)."""
    from hssal_ray.data.catalog import scan
    from hssal_ray.frozen.encode import store_key, store_path
    from hssal_ray.learners import learner_class

    if not learner_class(cfg).shares_inputs:
        return None
    cat = scan(cfg.data.root, test_fraction=cfg.data.test_fraction, seed=0)  # every row, whatever the split
    key = store_key(cfg, cat.table.column("sample_id"), cat.root)
    return str(store_path(cfg, run_dir, key)), key, cat.table.num_rows


def store_identity(cfg: Any, run_dir: str) -> dict[str, str] | None:
    """The store the trials share (``key``, ``path``, content ``fingerprint``, see
    :func:`store_fingerprint`), or None when the learner shares none. Call after :func:`pre_encode`."""
    from hssal_ray.frozen.store import open_store, view_names

    where = store_location(cfg, run_dir)
    if where is None:
        return None
    path, key, n = where
    store = open_store(path, views=view_names(cfg.frozen.embed_views), rows=n)
    return {"key": key, "path": path, "fingerprint": store_fingerprint(store)}


def run_grid(
    base: Any,
    name: str,
    run_dir: str,
    space: Mapping[str, Sequence[Any]],
    *,
    fixed: Mapping[str, Any] | None = None,
    num_cpus: int = 4,
    concurrent: int = 2,
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Run every combination of ``space`` as one loop trial of a Tune sweep; return their metrics rows.

    Args:
        base: The loop config (e.g. from :func:`base_config`).
        name: The sweep's name (its directory under ``run_dir``).
        run_dir: Parent directory of the sweep.
        space: ``{dotted key: [values]}``; a grid (every combination).
        fixed: Extra ``{dotted key: value}`` applied to every trial.
        num_cpus: Logical CPUs of the local Ray runtime.
        concurrent: Trials at once.

    Returns:
        ``{tuple of values in space order: metrics.jsonl rows}``; a trial that did not finish has ``[]``.
    """
    from itertools import product

    from hssal_ray.config import config_from_dict, config_to_dict
    from hssal_ray.loop.runner import read_metrics
    from hssal_ray.tune._space import trial_name
    from hssal_ray.tune.search import run_sweep

    d = config_to_dict(base)
    for k, v in (fixed or {}).items():
        sec, key = k.split(".", 1)
        d[sec][key] = v
    d["loop"].update(name=name, run_dir=run_dir, report=False)
    d["resources"]["num_cpus"] = num_cpus
    d["tune"] = {
        "scheduler": "fifo",
        "metric": "final_accuracy",
        "max_concurrent_trials": concurrent,
        "search_space": {k: {"grid": list(v)} for k, v in space.items()},
    }
    cfg = config_from_dict(d)
    run_sweep(cfg, progress=lambda s: log.info("%s", s))
    sweep_dir = _io.join(run_dir, name)
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    keys = list(space)
    for combo in product(*[space[k] for k in keys]):
        params = dict(zip(keys, combo, strict=True))
        out[combo] = read_metrics(_io.join(sweep_dir, trial_name(params)))
    return out
