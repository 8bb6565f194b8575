"""Streaming through Ray Data: flat driver memory, every sample exactly once and in order, bad files listed.

A generated dataset of ~3,000 small PNGs (plus the bad-input files of ``make_corrupt_files``) is
streamed through :func:`hssal_ray.data.pipeline.stream` (weak + strong views at 64 px: ~280 MiB
decoded) in batches of 32 with ``iter_batches``, the way a consumer iterates it. The driver's memory
is sampled every few batches (``/proc/self/status``):

* private memory (``RssAnon``: what the driver itself allocates) must stay flat after a warm-up;
* total RSS also counts the object-store pages the driver maps to read blocks zero-copy
  (``RssShmem``). Those pages belong to Ray's shared-memory store: they rise to a plateau set by the
  blocks in flight and capped by the store's capacity (measured: ~110-140 MiB with 12 MiB blocks),
  not by the dataset size. The test's runtime gets a 160 MiB store, so total RSS growth after the
  warm-up must stay below that capacity plus the private bound.

Both bounds are below the decoded size (which materialising the dataset on the driver would cost),
the private one by a factor of ~6.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator

import pytest

from hssal_ray.data.catalog import scan
from hssal_ray.data.pipeline import BAD_DIR, collect_bad_samples, make_schedule, stream
from hssal_ray.data.synthetic import CORRUPT_CASES, make_corrupt_files, make_synthetic_rs

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)

CLASSES, PER_CLASS, SRC_SIZE = 4, 750, 24  # 3,000 good images on disk (~2 MB of PNG)
SIZE, BATCH, VIEWS = 64, 32, ("weak", "strong")
SAMPLE_EVERY = 4  # batches between RSS samples
WARMUP_BATCHES = 16  # Ray Data's executor, block prefetch and imports settle in here
GROWTH_BOUND_MB = 48.0  # allowed growth of the driver's private memory after warm-up
STORE_MB = 160  # object store of the test's own runtime


def _mem_mb() -> tuple[float, float]:
    """``(private, total)`` resident memory of the driver in MiB: ``RssAnon`` and ``VmRSS``."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("RssAnon", "VmRSS"):
                vals[key] = int(line.split()[1]) / 1024
    return vals["RssAnon"], vals["VmRSS"]


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """A local Ray runtime of our own (never another user's cluster, no well-known port)."""
    import ray

    from hssal_ray._ray import init_private_ray

    started = not ray.is_initialized()
    if started:
        init_private_ray(
            num_cpus=2,
            object_store_memory=STORE_MB * 2**20,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    from ray.data import DataContext

    ctx = DataContext.get_current()
    old = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = old
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """~3,000 synthetic PNGs in class folders, plus one file per bad-input case in the first class."""
    root = str(tmp_path_factory.mktemp("stream") / "ds")
    make_synthetic_rs(root, num_classes=CLASSES, per_class=PER_CLASS, size=SRC_SIZE, fmt="png", seed=3)
    first = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))[0]
    make_corrupt_files(os.path.join(root, first), size=16)
    expected_bad = {f"{first}/{fname}": reason for fname, reason in CORRUPT_CASES.values() if reason}
    return root, expected_bad


def test_stream_is_flat_in_memory_complete_ordered_and_lists_bad_files(ray_runtime, dataset, tmp_path):
    root, expected_bad = dataset
    cat = scan(root)
    n_bad = len(expected_bad)
    assert len(cat) == CLASSES * PER_CLASS + len(CORRUPT_CASES)
    sched = make_schedule(cat.table, cat.table.num_rows, seed=11)  # one seeded permutation: each id once
    order = sched.column("sample_id").to_pylist()
    run_dir = str(tmp_path / "run")
    ds = stream(
        sched,
        root=cat.root,
        kind=cat.kind,
        bands=3,
        size=SIZE,
        views=VIEWS,
        batch_size=BATCH,
        bad_dir=os.path.join(run_dir, BAD_DIR),
    )
    per_sample = 4 * 3 * SIZE * SIZE * len(VIEWS)  # float32 bytes of one sample's views
    decoded_mb = (len(order) - n_bad) * per_sample / 2**20

    seen: list[str] = []
    samples: list[tuple[int, float, float]] = []  # (batches done, private MiB, total MiB)
    for i, batch in enumerate(ds.iter_batches(batch_size=BATCH, batch_format="numpy", prefetch_batches=2)):
        for view in VIEWS:
            x = batch[f"x_{view}"]
            assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype.name == "float32"
        seen.extend(str(s) for s in batch["sample_id"])
        if i % SAMPLE_EVERY == 0:
            samples.append((i, *_mem_mb()))
        del batch, x
    samples.append((i + 1, *_mem_mb()))

    # every good sample exactly once, in the schedule's order; the bad ones nowhere
    assert len(seen) == len(set(seen)), "a sample arrived twice"
    assert seen == [s for s in order if s not in expected_bad]

    # driver memory stays flat while streaming n_batches >> 1 batches
    n_batches = samples[-1][0]
    assert n_batches * BATCH >= len(seen) and n_batches >= 80
    assert GROWTH_BOUND_MB < decoded_mb / 5, "the bound must be far below what materialising would cost"

    import ray

    store_mb = ray.cluster_resources().get("object_store_memory", STORE_MB * 2**20) / 2**20
    total_bound = store_mb + GROWTH_BOUND_MB
    after = [s for s in samples if s[0] >= WARMUP_BATCHES]
    base_p, peak_p = after[0][1], max(s[1] for s in after)
    base_t, peak_t = after[0][2], max(s[2] for s in after)
    log.info(
        "driver memory after warm-up: private %.0f -> peak %.0f MiB, total %.0f -> peak %.0f MiB; "
        "%d batches; decoded dataset %.0f MiB; object store %.0f MiB; (batch, private, total) %s",
        base_p,
        peak_p,
        base_t,
        peak_t,
        n_batches,
        decoded_mb,
        store_mb,
        [(b, round(p), round(t)) for b, p, t in samples],
    )
    assert peak_p - base_p < GROWTH_BOUND_MB, (
        f"driver private memory grew {peak_p - base_p:.1f} MiB ({base_p:.0f} -> {peak_p:.0f} MiB) after "
        f"{WARMUP_BATCHES} warm-up batches, over {n_batches} batches of {BATCH}; bound "
        f"{GROWTH_BOUND_MB:.0f} MiB; decoded dataset {decoded_mb:.0f} MiB"
    )
    if total_bound < decoded_mb:  # only meaningful when the store is smaller than the data
        assert peak_t - base_t < total_bound, (
            f"driver total RSS grew {peak_t - base_t:.1f} MiB ({base_t:.0f} -> {peak_t:.0f} MiB) after "
            f"warm-up, over {n_batches} batches; bound {total_bound:.0f} MiB (object store {store_mb:.0f} + "
            f"{GROWTH_BOUND_MB:.0f}); decoded dataset {decoded_mb:.0f} MiB"
        )

    # bad files were skipped and listed, each with its reason
    assert collect_bad_samples(run_dir) == n_bad
    with open(os.path.join(run_dir, "bad_samples.csv")) as f:
        listed = {r["sample_id"]: r["reason"] for r in csv.DictReader(f)}
    assert {sid: reason.split(":")[0] for sid, reason in listed.items()} == expected_bad
