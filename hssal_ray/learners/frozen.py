"""The frozen learner: the encoder never changes, so every image is encoded once per run and each
round trains, evaluates and scores a head on the stored features.

Every stage reads the run's embedding store (:mod:`hssal_ray.frozen.store`, encoded on first use
by a Ray Data actor pool, :func:`~hssal_ray.frozen.store.ensure_store`) and writes the same files
as the image-level learner: ``round_XXX/checkpoint/`` (the head's online and EMA weights) and
``scores.parquet`` (the scores contract, so every query strategy works unchanged). No Ray is
needed after the encode, unless ``resources.store_shards >= 2`` (:mod:`hssal_ray.frozen.sharded`).
What depends only on the store and the training split is derived once per run
(:mod:`hssal_ray.frozen.split_cache`); scores are written block by block
(:mod:`hssal_ray.frozen.scores`): memory follows the block, not the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from torch import nn

from hssal_ray import _io
from hssal_ray.learners.base import RunView
from hssal_ray.rounds import (
    checkpoint_meta,
    classification_metrics,
    derive_seed,
    load_weights,
    round_ema_initial_weight,
    scores_committee,
    ssl_active,
    warm_start_of,
    write_checkpoint,
)
from hssal_ray.state import LabeledSet, round_dir

__all__ = ["FrozenLearner", "stored_rows", "COMMITTEE_FILE"]

COMMITTEE_FILE = "committee.safetensors"
"""``round_XXX/`` file of the pool's other committee members (``query.uncertainty=committee``):
``rows`` (store rows, int64), ``teacher`` and ``graph`` (float16 ``(rows, C)``), row-aligned."""


def stored_rows(store: Any, table: pa.Table) -> np.ndarray:
    """Store rows of the samples of ``table`` that have features (a sample that failed to encode has none)."""
    rows = store.rows_of(table.column("sample_id"))
    return rows[~store.missing[rows]]


class FrozenLearner:
    """:class:`~hssal_ray.learners.base.Learner` of ``ssl.finetune=frozen``.

    Args:
        run: The run the learner serves.
        store: The run's embedding store when already open (benchmarks, tests); otherwise it is
            encoded or opened on first use and kept here for the run.
    """

    shares_inputs: ClassVar[bool] = True

    def __init__(self, run: RunView, store: Any = None) -> None:
        self.run = run
        self._store = store

    @property
    def store(self) -> Any:
        """The run's :class:`~hssal_ray.frozen.store.EmbeddingStore` (encoded on first use)."""
        if self._store is None:
            self._store = self._ensure_store(
                self.run.cfg, self.run.catalog, self.run.run_dir, self.run.progress
            )
        return self._store

    @store.setter
    def store(self, store: Any) -> None:
        self._store = store

    @staticmethod
    def _ensure_store(cfg: Any, catalog: Any, run_dir: str, progress: Any) -> Any:
        from hssal_ray._ray import ensure_ray
        from hssal_ray.frozen.store import ensure_store

        ensure_ray(cfg.resources)
        return ensure_store(cfg, catalog, run_dir, progress=progress)

    def _num_classes(self) -> int:
        return len(self.run.catalog.class_names)

    def _load_head(self, ckpt_dir: str, which: str) -> nn.Module:
        from hssal_ray.frozen.head import build_head

        head = build_head(self.run.cfg, self.store.dim, self._num_classes())
        head.load_state_dict(load_weights(ckpt_dir, which))
        return head.eval()

    def train(self, round_idx: int, init_dir: str | None) -> dict[str, Any]:
        """Train round ``round_idx``'s head on the stored views; writes ``round_XXX/checkpoint/``."""
        from hssal_ray.frozen.head import train_head
        from hssal_ray.frozen.split_cache import run_graph, run_stats

        run, cfg, store, r = self.run, self.run.cfg, self.store, round_idx
        labeled = LabeledSet.load(run.run_dir)
        lab_table = run.labeled_rows(labeled)
        lab_rows = store.rows_of(lab_table.column("sample_id"))
        labels = lab_table.column("label").to_numpy()
        ok = ~store.missing[lab_rows]  # a row without features cannot be trained on
        lab_rows, labels = lab_rows[ok], labels[ok]
        pool = run.pool_rows(labeled)
        all_pool = store.rows_of(pool.column("sample_id"))
        keep = ~store.missing[all_pool]
        pool_rows = all_pool[keep]
        truth = pool.column("label").to_numpy(zero_copy_only=False)[keep]
        train_rows = stored_rows(store, run.split("train"))
        stats = run_stats(cfg, store, train_rows)
        init = warm_start_of(init_dir) if init_dir is not None else None
        ssl_on = ssl_active(cfg, len(pool_rows), r)
        graph = None
        if ssl_on and cfg.frozen.pseudo_labels == "graph":
            graph = run_graph(cfg, store, train_rows, stats, progress=run.progress)
        members: dict[str, np.ndarray] | None = {} if scores_committee(cfg) else None
        state, metrics = train_head(
            cfg,
            store.views,
            lab_rows,
            labels,
            pool_rows,
            truth,
            self._num_classes(),
            stats_rows=train_rows,
            seed=derive_seed(cfg.seed, r, "train"),
            init=init,
            ssl_on=ssl_on,
            progress=True,
            stats=stats,
            graph=graph,
            committee_out=members,
        )
        if members is not None:  # before the checkpoint: a round with a checkpoint has its committee
            self._write_committee(round_dir(run.run_dir, r), members)
        metrics["ema_initial_weight"] = round_ema_initial_weight(cfg, state)
        meta = checkpoint_meta(state, r, metrics, regime="frozen")
        write_checkpoint(state, _io.join(round_dir(run.run_dir, r), "checkpoint"), meta)
        return metrics

    @staticmethod
    def _write_committee(rdir: str, members: dict[str, np.ndarray]) -> None:
        """The round's committee file (:data:`COMMITTEE_FILE`), atomically; removed when the round
        trained no graph pseudo-labels (no unlabeled term): its rows then score their own margin."""
        from safetensors.numpy import save

        path = _io.join(rdir, COMMITTEE_FILE)
        if not members:
            if _io.exists(path):
                _io.remove(path)
            return
        tensors = {
            "rows": np.ascontiguousarray(members["rows"], dtype=np.int64),
            "teacher": np.ascontiguousarray(members["teacher"], dtype=np.float16),
            "graph": np.ascontiguousarray(members["graph"], dtype=np.float16),
        }
        _io.makedirs(rdir)
        _io.atomic_write_bytes(path, save(tensors))

    def _committee_of(self, round_idx: int, rows: np.ndarray) -> list[np.ndarray]:
        """The other committee members of store rows ``rows``: ``[teacher, graph]``, ``(len(rows), C)``
        float32 each, NaN for a row the round's committee file does not hold (a labeled row, or a
        round without the unlabeled term)."""
        from safetensors.numpy import load

        from hssal_ray.query.base import find_rows

        nc = self._num_classes()
        out = [np.full((len(rows), nc), np.nan, np.float32) for _ in range(2)]
        path = _io.join(round_dir(self.run.run_dir, round_idx), COMMITTEE_FILE)
        if not _io.exists(path):
            return out
        got = load(_io.read_bytes(path))
        order = np.argsort(got["rows"], kind="stable")
        pos, found = find_rows(got["rows"][order], rows)
        at = order[pos[found]]
        for o, name in zip(out, ("teacher", "graph"), strict=True):
            o[found] = got[name][at]
        return out

    def evaluate(self, round_idx: int) -> dict[str, Any]:
        """Test-split accuracy of the evaluation head (and of the other weights, as a diagnostic)."""
        from hssal_ray.frozen.infer import predict_views

        cfg, store = self.run.cfg, self.store
        test = self.run.split(cfg.data.eval_split)
        rows = store.rows_of(test.column("sample_id"))
        y = test.column("label").to_numpy(zero_copy_only=False)
        ok = ~store.missing[rows]
        tta = cfg.frozen.tta_views
        ckpt = _io.join(round_dir(self.run.run_dir, round_idx), "checkpoint")
        other = "online" if cfg.ssl.eval_model == "ema" else "ema"
        pred = predict_views(self._load_head(ckpt, cfg.ssl.eval_model), store.views, rows[ok], tta)
        alt = predict_views(self._load_head(ckpt, other), store.views, rows[ok], tta)
        return classification_metrics(
            y[ok], pred.argmax(1), self._num_classes(), other=alt.argmax(1), eval_model=cfg.ssl.eval_model
        )

    def score(self, round_idx: int, out_path: str) -> None:
        """Scores of the scored rows with the evaluation head, written block by block and renamed
        into place when whole; with ``resources.store_shards >= 2`` a directory of parts written by
        shard actors."""
        from hssal_ray.frozen.scores import write_scores_of
        from hssal_ray.frozen.sharded import shard_count, sharded_score

        cfg, store = self.run.cfg, self.store
        rows = stored_rows(store, self.run.scored_rows(round_idx))
        nc = self._num_classes()
        head = self._load_head(
            _io.join(round_dir(self.run.run_dir, round_idx), "checkpoint"), cfg.ssl.eval_model
        )
        members = self._committee_of(round_idx, rows) if scores_committee(cfg) else None
        if shard_count(cfg) >= 2 and len(rows):
            sharded_score(cfg, store, rows, head, nc, out_path, shard_count(cfg), members)
            return
        fs, inner = _io.resolve_fs(out_path)
        if fs.get_file_info(inner).type == pafs.FileType.Directory:  # parts left by an image-level run
            _io.remove(out_path)
        write_scores_of(cfg, store, head, rows, out_path, nc, members)

    def embedding_source(self) -> Callable[[np.ndarray], Any]:
        """:meth:`query_embeddings`: the frozen encoder's query embeddings come from the store."""
        return self.query_embeddings

    def query_embeddings(self, ids: np.ndarray) -> Any:
        """The query's embeddings of pool ``ids`` (the scored rows, in the scores file's order), read
        from the store when indexed (:class:`~hssal_ray.frozen.query_rows.StoreUnitRows`): the scores
        file's ``embedding`` values, bit for bit, without reading that column (2.5 GB at 1M rows)."""
        from hssal_ray.errors import DataError
        from hssal_ray.frozen.query_rows import StoreUnitRows

        store = self.store
        rows = store.rows_of(ids)
        if store.missing[rows].any():  # the scores file never holds such rows
            bad = ids[np.flatnonzero(store.missing[rows])[:5]].tolist()
            raise DataError(f"the scores file holds samples without features in the store: {bad}")
        return StoreUnitRows(store.views["none"], rows)

    def cold_start_pool(self) -> Any:
        """The train split with the pretrained encoder's clean features (L2-normalised): no scoring pass."""
        return self.feature_pool(self.run.split("train"))

    def feature_pool(self, table: pa.Table) -> Any:
        """A query :class:`~hssal_ray.query.Pool` of the rows of ``table`` with their clean features only."""
        from hssal_ray.frozen.query_rows import StoreUnitRows
        from hssal_ray.query import Pool

        store = self.store
        rows = stored_rows(store, table)
        # read by row when indexed (an archive's cold start never holds the (n, d) matrix): the values
        # torch.nn.functional.normalize gives, as when this built the matrix
        return Pool(ids=store.ids[rows], embeddings=StoreUnitRows(store.views["none"], rows, "normalize"))

    @classmethod
    def prepare_inputs(
        cls, cfg: Any, catalog: Any, run_dir: str, progress: Callable[[str], None] | None = None
    ) -> None:
        """Encode the embedding store that runs with these data and encoder settings share."""
        cls._ensure_store(cfg, catalog, run_dir, progress)

    @staticmethod
    def trial_footprint(cfg: Any, bundles: list[dict[str, float]]) -> dict[str, float]:
        """The CPUs of Tune's bundles plus one: the rounds run in the trial itself; the extra CPU
        is for an encode if the store is new. No GPU is counted."""
        return {"CPU": float(sum(b.get("CPU", 0.0) for b in bundles) + 1.0), "GPU": 0.0}

    @staticmethod
    def classifier(cfg: Any, weights: dict[str, Any], num_classes: int) -> nn.Module:
        """The encoder of :class:`~hssal_ray.frozen.encode.Encoder` (same weights, same seed) and the
        head with the checkpoint's weights; it computes the clean view (no stored augmented views)."""
        from hssal_ray.frozen.head import build_head
        from hssal_ray.models import model_from_config
        from hssal_ray.run_model import FrozenClassifier

        torch.manual_seed(0)  # what Encoder does: a backbone without pretrained weights is reproducible
        backbone = model_from_config(cfg, num_classes=1).backbone.eval()
        with torch.no_grad():
            size = cfg.data.image_size
            dim = int(backbone(torch.zeros(1, cfg.data.bands, size, size)).shape[1])
        head = build_head(cfg, dim, num_classes)
        head.load_state_dict(weights)
        return FrozenClassifier(backbone, head).eval()
