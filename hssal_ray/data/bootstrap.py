"""The run's catalog bootstrap: :func:`ensure` loads ``RUN/manifest.parquet``, or builds it once.

Building it scans ``data.root`` (or first generates the synthetic demo dataset under
``RUN/synthetic_data`` when no root is given), fixes the seeded train/test/val split and writes
``manifest.parquet`` and ``classes.json``. Every later stage, and every resumed run, reads the
same manifest, so the split never changes within a run. What the scan refused (links out of the
root, dangling links, FIFOs and other non-regular files, empty class folders) is listed in
``RUN/bad_samples.csv`` with a reason per row, before the manifest is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hssal_ray import _io
from hssal_ray.data.catalog import Catalog, scan

__all__ = ["ensure", "MANIFEST_FILE"]

MANIFEST_FILE = "manifest.parquet"


def ensure(cfg: Any, run_dir: str, progress: Callable[[str], None]) -> Catalog:
    """The run's :class:`Catalog`: loaded from ``run_dir/manifest.parquet``, built there if missing.

    Args:
        cfg: The run's :class:`~hssal_ray.config.ExperimentConfig` (``data.*`` and ``seed``).
        run_dir: The run directory.
        progress: Called with a line when the demo data are generated and when the catalog is built.
    """
    path = _io.join(run_dir, MANIFEST_FILE)
    if _io.exists(path):
        return Catalog.load(path)
    root = cfg.data.root
    if root is None:
        root = _synthetic_root(cfg, run_dir)
        progress(f"[hssal] no data.root given: generated the synthetic demo dataset in {root}")
    cat = scan_config(cfg, root)
    refused = ""
    if cat.refused:
        from hssal_ray.data.pipeline import BAD_DIR, collect_bad_samples, write_bad_part

        write_bad_part(_io.join(run_dir, BAD_DIR), cat.refused)
        collect_bad_samples(run_dir)
        refused = f"; {len(cat.refused)} entries of the data root not used, listed in bad_samples.csv"
    cat.save(path)
    _io.atomic_write_json(_io.join(run_dir, "classes.json"), list(cat.class_names))
    loaded = Catalog.load(path)
    progress(f"[hssal] catalog: {cat.summary()}{refused}")
    return loaded


def scan_config(cfg: Any, root: str | None = None) -> Catalog:
    """:func:`~hssal_ray.data.catalog.scan` of ``root`` (default ``data.root``) with the run's
    ``data.*`` settings and seed: the catalog a run of ``cfg`` builds."""
    d = cfg.data
    return scan(
        d.root if root is None else root,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        layout=d.layout,
        val_fraction=d.val_fraction,
        follow_symlinks=d.follow_symlinks,
    )


def _synthetic_root(cfg: Any, run_dir: str) -> str:
    """Generate the synthetic demo dataset under ``run_dir`` once (``.complete`` marks it done)."""
    from hssal_ray.data.synthetic import make_synthetic_rs

    root = _io.join(run_dir, "synthetic_data")
    if not _io.exists(_io.join(root, ".complete")):
        make_synthetic_rs(
            root,
            num_classes=cfg.data.synthetic_classes,
            per_class=cfg.data.synthetic_per_class,
            size=cfg.data.synthetic_size,
            seed=cfg.seed,
            bands=cfg.data.bands,
            fmt="png" if cfg.data.bands in (1, 3, 4) else "tif",
        )
        _io.atomic_write_text(_io.join(root, ".complete"), "ok\n")
    return root
