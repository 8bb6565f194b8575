"""The run context every stage function takes: the config, the run directory and what they derive.

:class:`RunContext` holds the resolved config, the run directory, the console line sink, the
manifest (:func:`hssal_ray.data.bootstrap.ensure`), the oracle (:func:`hssal_ray.oracle.from_config`,
built on first use), the lease check and the run's learner (:attr:`RunContext.learner`, chosen once
here by :func:`hssal_ray.learners.make_learner`: the train, evaluate and score stages and the cold
start call it); and it answers which manifest rows a stage works on:

* :meth:`RunContext.split`: the rows of a split (``train``, ``test``, ``val``);
* :meth:`RunContext.labeled_rows`: the readable labeled train rows, carrying the *oracle's* labels;
* :meth:`RunContext.pool_rows`: the unlabeled pool (train rows neither labeled nor unreadable);
* :meth:`RunContext.scored_rows`: what the score stage scores (the pool *and* the labeled rows; with
  ``query.pool_sample``, a seeded sample of the pool), and :meth:`RunContext.cold_start_rows` what the cold
  start reads (the train split, or its sample).

Rows listed in ``RUN/bad_samples.csv`` (images that failed to decode) are left out of the pool.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hssal_ray import _csv, _io
from hssal_ray.config import ExperimentConfig
from hssal_ray.learners import Learner, make_learner
from hssal_ray.loop.metrics import update_metrics
from hssal_ray.state import LabeledSet

__all__ = ["RunContext"]


class RunContext:
    """What the stages of one run share (see the module docstring).

    Args:
        cfg: The resolved experiment config.
        progress: Called with one summary line per finished stage/round (default: stderr).
        on_round: Called after every evaluated round with all ``metrics.jsonl`` rows so far
            (Ray Tune reports through this).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        progress: Callable[[str], None] | None = None,
        on_round: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_round = on_round
        self.run_dir = cfg.run_path
        self.progress = progress or (lambda s: print(s, file=sys.stderr, flush=True))
        self._catalog: Any = None
        self._oracle: Any = None
        self._lease: Any = None  # the run directory's RunLease while a driver holds it
        self.learner: Learner = make_learner(cfg, self)

    # ------------------------------------------------------------------ what the run is made of
    def load_catalog(self, catalog: Any = None) -> None:
        """Load (or build, on the first call of a run) the run's manifest.

        Args:
            catalog: a manifest built elsewhere (a ``Catalog``, e.g. an archive index) to use instead
                of the run's own scan.
        """
        if catalog is not None:
            self._catalog = catalog
            return
        from hssal_ray.data.bootstrap import ensure

        self._catalog = ensure(self.cfg, self.run_dir, self.progress)

    @property
    def catalog(self) -> Any:
        """The run's manifest (``hssal_ray.data.catalog.Catalog``)."""
        return self._catalog

    @property
    def oracle(self) -> Any:
        """The run's :class:`~hssal_ray.oracle.Oracle` (built from ``oracle.*`` on first use)."""
        if self._oracle is None:
            from hssal_ray.oracle import from_config

            self._oracle = from_config(self.cfg, self.catalog, self.load_image_hwc, self.progress)
        return self._oracle

    def check_lease(self) -> None:
        """Stop (``LeaseLostError``) if another driver took the run over; called before state writes."""
        if self._lease is not None:
            self._lease.check()

    def update_metrics(self, r: int, values: dict[str, Any], replace: bool = False) -> None:
        """Merge ``values`` into round ``r``'s row of ``metrics.jsonl`` (after the lease check)."""
        update_metrics(self.run_dir, r, values, replace=replace, guard=self.check_lease)

    # ------------------------------------------------------------------ which rows a stage uses
    def split(self, split: str) -> pa.Table:
        """The manifest rows of ``split`` (no copy when every row is in it)."""
        return self.catalog.split_table(split)

    def bad_ids(self) -> set[str]:
        """Ids listed in ``RUN/bad_samples.csv`` (unreadable images, collected after each stage)."""
        p = _io.join(self.run_dir, "bad_samples.csv")
        if not _io.exists(p):
            return set()
        return {r["sample_id"] for r in _csv.read_dicts(_io.read_text(p))}

    def labeled_rows(self, labeled: LabeledSet) -> pa.Table:
        """Manifest rows of the labeled set that can be read, carrying the ORACLE's labels.

        Labeled images listed in ``bad_samples.csv`` are left out: nothing trains on them, and
        ``num_labeled`` in ``metrics.jsonl`` counts these rows only.
        """
        train = self.split("train")
        bad = self.bad_ids()
        lab = {s: y for s, y in labeled.labels().items() if s not in bad}
        mask = pc.is_in(train.column("sample_id"), value_set=pa.array(list(lab), pa.string()))
        rows = train.filter(mask)
        labels = pa.array([lab[s] for s in rows.column("sample_id").to_pylist()], pa.int32())
        return rows.set_column(rows.schema.get_field_index("label"), "label", labels)

    def pool_rows(self, labeled: LabeledSet) -> pa.Table:
        """The unlabeled pool: train rows that are neither labeled nor unreadable."""
        return self._train_rows_without(set(labeled.ids) | self.bad_ids())

    def scored_rows(self, round_idx: int | None = None) -> pa.Table:
        """What the score stage scores: the unlabeled pool *and* the labeled set.

        The query stage marks the labeled rows (``Pool.exclude``) so that no strategy selects them,
        while coreset starts from them as centres and TypiClust skips the clusters holding them.
        With ``query.pool_sample`` and a round, the labeled set and that round's seeded sample of the
        pool (:func:`hssal_ray.rounds.pool_sample_rows`), in the split's order.
        """
        rows = self._train_rows_without(self.bad_ids())
        if not self.cfg.query.pool_sample or round_idx is None:
            return rows
        from hssal_ray.loop.stages.query import round_budget

        labeled = LabeledSet.load(self.run_dir).ids
        n_train = self.split("train").num_rows
        budget = round_budget(self.cfg, len(labeled), n_train)
        q = self.cfg.query
        ratio = q.candidate_ratio if q.strategy in ("hal", "hal_flat") else 1.0  # HAL ranks its candidates
        return self._pool_sample(rows, labeled, n_train, budget, round_idx, f"round {round_idx}", ratio)

    def cold_start_rows(self) -> pa.Table:
        """The train split, which the cold start's TypiClust reads; with ``query.pool_sample`` a seeded
        sample of it, at least ``loop.initial_labeled`` rows (the image path scores these once)."""
        from hssal_ray.config.loop import label_count

        train = self.split("train")
        if not self.cfg.query.pool_sample:
            return train
        n = label_count(self.cfg.loop.initial_labeled, train.num_rows)
        # TypiClust has no candidates: ratio 1
        return self._pool_sample(train, [], train.num_rows, n, "cold_start", "cold start", 1.0)

    def _pool_sample(
        self, rows: pa.Table, labeled: list[str], n_train: int, budget: int, key: Any, what: str, ratio: float
    ) -> pa.Table:
        """``rows`` less what ``query.pool_sample`` (a count, or a fraction of the ``n_train`` training rows)
        leaves out, the ``labeled`` ids kept; a line says so."""
        from hssal_ray.config.loop import label_count
        from hssal_ray.rounds import pool_sample_rows

        q = self.cfg.query
        in_labeled = pc.is_in(rows.column("sample_id"), value_set=pa.array(sorted(labeled), pa.string()))
        mask = in_labeled.to_numpy(zero_copy_only=False).astype(bool)
        size = label_count(q.pool_sample, n_train)
        keep = pool_sample_rows(mask, size, budget, self.cfg.seed, key, ratio)
        if keep is None:
            return rows
        n_lab = int(mask.sum())
        tail = f" and the {n_lab:,} labeled" if n_lab else ""
        self.progress(
            f"[hssal] {what}: scoring {len(keep) - n_lab:,} of the {len(mask) - n_lab:,} unlabeled rows "
            f"(query.pool_sample={q.pool_sample}){tail}"
        )
        return rows.take(pa.array(keep))

    def _train_rows_without(self, exclude: set[str]) -> pa.Table:
        train = self.split("train")
        if not exclude:
            return train
        mask = pc.invert(
            pc.is_in(train.column("sample_id"), value_set=pa.array(sorted(exclude), pa.string()))
        )
        return train.filter(mask)

    def load_image_hwc(self, sample_id: str) -> np.ndarray:
        """One image as HWC with 3 bands (what human oracles embed in their hand-off files)."""
        from hssal_ray.data.fetch import load_image_hwc

        return load_image_hwc(self.catalog, self.cfg.data, sample_id)
