"""The loop's two training paths behind one interface (:class:`~hssal_ray.learners.base.Learner`).

:func:`make_learner` picks a run's learner from its config, once, where the run context is built
(:class:`hssal_ray.loop.context.RunContext`); stages, the cold start, Tune's resource plan, export
and prediction ask the learner (or :func:`learner_class`) instead of the config. This is the one
place besides :mod:`hssal_ray.config` that reads ``ssl.finetune=frozen``.

* :mod:`~hssal_ray.learners.image`: fine-tuning on images (Ray Train, Ray Data scoring);
* :mod:`~hssal_ray.learners.frozen`: a head on the run's embedding store.

Both import :mod:`hssal_ray.rounds` (the shared, Ray-free plumbing); nothing below them imports a learner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hssal_ray.learners.base import Learner, RunView

if TYPE_CHECKING:
    from hssal_ray.learners.frozen import FrozenLearner
    from hssal_ray.learners.image import ImageLearner

__all__ = ["Learner", "RunView", "learner_class", "make_learner"]


def learner_class(cfg: Any) -> type[ImageLearner] | type[FrozenLearner]:
    """The learner class of ``cfg``: ``ssl.finetune=frozen`` -> frozen; ``full``, ``partial`` -> image."""
    if cfg.ssl.finetune == "frozen":
        from hssal_ray.learners.frozen import FrozenLearner

        return FrozenLearner
    from hssal_ray.learners.image import ImageLearner

    return ImageLearner


def make_learner(cfg: Any, run: RunView) -> Learner:
    """The learner of the run ``run`` (a :class:`~hssal_ray.learners.base.RunView`) with config ``cfg``."""
    return learner_class(cfg)(run)
