"""The :class:`Learner` protocol: what the loop's stages ask of a training path, and what it reads of the run.

A learner trains a round's model, evaluates it, scores the training split with it and gives the
cold start its features. Two implement it: :class:`~hssal_ray.learners.image.ImageLearner` (the
image-level path: Ray Train fine-tuning, Ray Data scoring) and
:class:`~hssal_ray.learners.frozen.FrozenLearner` (a frozen encoder: the run's embedding store and
a head trained on it). Both write the same files in the run directory: ``round_XXX/checkpoint/``
(:mod:`hssal_ray.rounds.checkpoint`) and ``round_XXX/scores.parquet`` (the scores contract, the
same columns on both). :func:`hssal_ray.learners.make_learner` picks one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from hssal_ray.config import ExperimentConfig
    from hssal_ray.data.catalog import Catalog
    from hssal_ray.query import Pool
    from hssal_ray.state import LabeledSet

__all__ = ["Learner", "RunView"]


class RunView(Protocol):
    """What a learner reads of its run (:class:`hssal_ray.loop.context.RunContext` provides it)."""

    cfg: ExperimentConfig
    run_dir: str
    progress: Callable[[str], None]

    @property
    def catalog(self) -> Catalog:
        """The run's manifest."""
        ...

    def split(self, split: str) -> pa.Table:
        """The manifest rows of ``split``."""
        ...

    def labeled_rows(self, labeled: LabeledSet) -> pa.Table:
        """The readable labeled train rows, carrying the oracle's labels."""
        ...

    def pool_rows(self, labeled: LabeledSet) -> pa.Table:
        """The unlabeled pool."""
        ...

    def cold_start_rows(self) -> pa.Table:
        """What the cold start reads (the train split; a sample of it with ``query.pool_sample``)."""
        ...

    def scored_rows(self, round_idx: int | None = None) -> pa.Table:
        """What the score stage scores (the pool and the labeled rows; round ``round_idx``'s sample of
        the pool with ``query.pool_sample``)."""
        ...


class Learner(Protocol):
    """A training path of the loop, bound to one run (see the module docstring).

    Attributes:
        shares_inputs: Whether runs with the same data and encoder settings share inputs that
            :meth:`prepare_inputs` can build ahead of them (the frozen path's embedding store).
    """

    shares_inputs: ClassVar[bool]

    def train(self, round_idx: int, init_dir: str | None) -> dict[str, Any]:
        """Train round ``round_idx`` (warm-started from checkpoint ``init_dir`` when given), write
        ``round_XXX/checkpoint/`` and return the round's training figures."""
        ...

    def evaluate(self, round_idx: int) -> dict[str, Any]:
        """Accuracies of round ``round_idx``'s checkpoint on ``data.eval_split``
        (:func:`hssal_ray.rounds.classification_metrics`, with the other weights as ``other``)."""
        ...

    def score(self, round_idx: int, out_path: str) -> None:
        """Score the run's :meth:`~RunView.scored_rows` with round ``round_idx``'s evaluation
        weights and write ``out_path`` (the scores contract)."""
        ...

    def cold_start_pool(self) -> Pool:
        """The train split as a query pool with features of the untrained (or pretrained) model,
        for the TypiClust cold start of round 0."""
        ...

    def embedding_source(self) -> Callable[[np.ndarray], Any] | None:
        """What gives the round's query its embeddings from the pool's ids instead of the scores
        file's ``embedding`` column (:func:`hssal_ray.loop.query_batch.run_query`), or None: the column."""
        ...

    @classmethod
    def prepare_inputs(
        cls,
        cfg: ExperimentConfig,
        catalog: Catalog,
        run_dir: str,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Build what :attr:`shares_inputs` names, before the runs that share it (nothing when False)."""
        ...

    @staticmethod
    def trial_footprint(cfg: ExperimentConfig, bundles: list[dict[str, float]]) -> dict[str, float]:
        """``{"CPU", "GPU"}`` one Tune trial of this path holds at most, given the placement-group
        ``bundles`` Tune reserves for it (:func:`hssal_ray.tune._plan.trial_bundles`)."""
        ...

    @staticmethod
    def classifier(cfg: ExperimentConfig, weights: dict[str, Any], num_classes: int) -> nn.Module:
        """The run's evaluation classifier on images, with checkpoint ``weights`` (export, predict)."""
        ...
