"""Config section of the frozen-encoder path (``ssl.finetune=frozen``): ``frozen.*``.

These settings are read only by :mod:`hssal_ray.frozen` and :mod:`hssal_ray.learners.frozen`;
``ssl.finetune`` (which chooses the path) stays in ``ssl``. They were once ``ssl.*`` keys:
:data:`MOVED_FROM_SSL` lists them, and :func:`hssal_ray.config.loading.move_old_keys` still reads
the old names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from hssal_ray.config._base import _check


@dataclass(frozen=True)
class FrozenConfig:
    """The frozen path: a fixed encoder, embeddings cached once, a head trained on them.

    Args:
        embed_views: Seeded weak and strong augmented views cached per image (each); the head
            trains on them, so ``ssl.finetune=frozen`` needs at least 1. The encode and the store
            grow with ``1 + 2 * embed_views``; measured with ``tta_views`` (studies 23-25 of
            ``benchmarks/results/hal_recipe_val.md``): 1 and 1 cost HSSAL 1.0-1.6 points against 2 and 2,
            3 and 3 gain it 0.2-0.5.
        feature_norm: ``l2`` divides each cached feature vector by its norm before the head
            standardises it (better with few labels, equal with all); ``none`` keeps raw features.
        tta_views: Evaluation and scoring average the head's probabilities over the clean view and
            this many stored weak views (0 = clean view only; at most ``embed_views``).
        pseudo_labels: Where the unlabeled term's targets come from. ``model``: FixMatch, the
            weak view's prediction of the head being trained. ``graph``: a supervised teacher head
            is trained first, its predictions on the labeled set and the pool are smoothed over the
            pool's cosine k-nearest-neighbour graph (label propagation, Zhou et al. 2004, started
            from the teacher's predictions), and the round's head trains its strong views on those
            hard pseudo-labels (the weak-to-strong step of FixMatch with a better teacher). Chosen
            on the UCM validation split (benchmarks/NOTES.md).
        graph_k: ``graph``: neighbours per node of the k-NN graph.
        graph_alpha: ``graph``: propagation weight in ``(0, 1)`` (larger = smoother).
        graph_cutoff: ``graph``: keep a pseudo-label when its smoothed probability is at least
            this (0 keeps every pool sample; ``ssl.p_cutoff`` is the ``model`` mode's threshold).
        graph_max_nodes: ``graph``: the k-NN graph of the training split (built once per run and
            saved beside the embedding store) is searched exactly up to this many rows; above, an
            approximate search (faiss k-means lists, each searched exactly among its nearest
            lists; on a GPU with ``resources.use_gpu`` the search stays exact). Every pool sample
            enters the graph and the unlabeled term, whatever the size.
        graph_balance: ``graph``: ``uniform`` rescales the smoothed labels' class columns (Sinkhorn
            iterations) until every class holds the same mass over the pool, each row still a
            distribution; ``none`` keeps them as propagated. Meant for the teacher's errors piling
            up on a few classes it over-predicts: balancing moves the doubtful rows to the classes
            they were taken from (measured on UCM and a long-tailed version of it:
            benchmarks/NOTES.md). It assumes balanced classes: for strongly imbalanced archives
            keep ``none``.

    Rules that involve other sections (``tta_views`` and ``pseudo_labels=graph`` need
    ``ssl.finetune=frozen``, and so on) are checked by
    :class:`~hssal_ray.config.experiment.ExperimentConfig`.
    """

    embed_views: int = 2
    feature_norm: Literal["l2", "none"] = "l2"
    tta_views: int = 0
    pseudo_labels: Literal["model", "graph"] = "model"
    graph_k: int = 10
    graph_alpha: float = 0.8
    graph_cutoff: float = 0.0
    graph_max_nodes: int = 50_000
    graph_balance: Literal["none", "uniform"] = "none"

    def __post_init__(self) -> None:
        _check(
            0 <= self.embed_views <= 16, "frozen.embed_views", f"must be in [0, 16], got {self.embed_views}"
        )
        _check(
            0 <= self.tta_views <= self.embed_views,
            "frozen.tta_views",
            f"must be in [0, frozen.embed_views={self.embed_views}] (it averages stored weak views), "
            f"got {self.tta_views}",
        )
        _check(self.graph_k >= 1, "frozen.graph_k", f"must be >= 1, got {self.graph_k}")
        _check(
            0.0 < self.graph_alpha < 1.0, "frozen.graph_alpha", f"must be in (0, 1), got {self.graph_alpha}"
        )
        _check(
            0.0 <= self.graph_cutoff <= 1.0,
            "frozen.graph_cutoff",
            f"must be in [0, 1], got {self.graph_cutoff}",
        )
        _check(
            self.graph_max_nodes >= 2, "frozen.graph_max_nodes", f"must be >= 2, got {self.graph_max_nodes}"
        )
        _check(
            self.graph_balance == "none" or self.pseudo_labels == "graph",
            "frozen.graph_balance",
            "balances the graph-smoothed pseudo-labels: it needs frozen.pseudo_labels=graph",
        )


MOVED_FROM_SSL: tuple[str, ...] = tuple(f.name for f in fields(FrozenConfig))
"""Every ``frozen.*`` key was an ``ssl.*`` key of the same name: a config (or a run directory's
``config.yaml``) that still says ``ssl.<key>`` loads, moved to ``frozen.<key>`` with a warning, and
the run's identity hashes the moved keys under ``ssl`` as before
(:func:`hssal_ray.loop.run_config.science_sha`)."""
