"""The image-level learner: each round fine-tunes the whole classifier (or its last stages) on images.

Training is a Ray Train ``TorchTrainer`` (:func:`hssal_ray.ssl.trainer.fit_round`); evaluation and
scoring run the evaluation weights over decoded images in a Ray Data actor pool
(:mod:`hssal_ray.scoring`). With ``resources.executor=driver`` both run in this process on the same
Ray Data streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from hssal_ray import _io
from hssal_ray.learners.base import RunView
from hssal_ray.state import LabeledSet, round_dir

__all__ = ["ImageLearner"]


class ImageLearner:
    """:class:`~hssal_ray.learners.base.Learner` of ``ssl.finetune`` ``full`` and ``partial``."""

    shares_inputs: ClassVar[bool] = False

    def __init__(self, run: RunView) -> None:
        self.run = run

    def _where(self) -> dict[str, Any]:
        cat = self.run.catalog
        return {
            "root": cat.root,
            "kind": cat.kind,
            "num_classes": len(cat.class_names),
            "run_dir": self.run.run_dir,
        }

    def train(self, round_idx: int, init_dir: str | None) -> dict[str, Any]:
        """One round of Ray Train fine-tuning on the labeled set and the unlabeled pool."""
        from hssal_ray.ssl.trainer import fit_round

        labeled = LabeledSet.load(self.run.run_dir)
        where = self._where()
        return fit_round(
            self.run.cfg,
            root=where["root"],
            kind=where["kind"],
            labeled=self.run.labeled_rows(labeled),
            pool=self.run.pool_rows(labeled),
            num_classes=where["num_classes"],
            round_idx=round_idx,
            run_dir=self.run.run_dir,
            init_dir=init_dir,
        ).metrics

    def evaluate(self, round_idx: int) -> dict[str, Any]:
        """Both weights of the checkpoint on ``data.eval_split``, over decoded images."""
        from hssal_ray.scoring import evaluate_split

        cfg = self.run.cfg
        return evaluate_split(
            cfg,
            self.run.split(cfg.data.eval_split),
            ckpt_dir=_io.join(round_dir(self.run.run_dir, round_idx), "checkpoint"),
            **self._where(),
        )

    def score(self, round_idx: int, out_path: str) -> None:
        """The scores of the scored rows, written from the scoring actors."""
        from hssal_ray.scoring import score_pool

        score_pool(
            self.run.cfg,
            self.run.scored_rows(round_idx),
            ckpt_dir=_io.join(round_dir(self.run.run_dir, round_idx), "checkpoint"),
            out_path=out_path,
            **self._where(),
        )

    def embedding_source(self) -> None:
        """None: the query reads the scores file's embeddings (this path's encoder changes every round)."""
        return None

    def cold_start_pool(self) -> Any:
        """Scores of the train split (a sample of it with ``query.pool_sample``) by the untrained (or
        pretrained) model, under ``RUN/cold_start/``."""
        from hssal_ray.query import load_pool
        from hssal_ray.rounds import derive_seed, write_checkpoint
        from hssal_ray.scoring import score_pool
        from hssal_ray.ssl.train_loop import build_train_state

        cfg = self.run.cfg
        d = _io.join(self.run.run_dir, "cold_start")
        ckpt = _io.join(d, "checkpoint")  # under the run directory: no collision between runs or trials
        where = self._where()
        torch.manual_seed(derive_seed(cfg.seed, "cold_start") % (2**31))
        state = build_train_state(cfg, where["num_classes"], torch.device("cpu"), total_steps=1)
        write_checkpoint(state, ckpt, {"step": 0, "round": "cold_start"})
        out = _io.join(d, "scores.parquet")
        score_pool(cfg, self.run.cold_start_rows(), ckpt_dir=ckpt, out_path=out, **where)
        return load_pool(out)

    @classmethod
    def prepare_inputs(
        cls, cfg: Any, catalog: Any, run_dir: str, progress: Callable[[str], None] | None = None
    ) -> None:
        """Nothing: every run decodes its images itself."""

    @staticmethod
    def trial_footprint(cfg: Any, bundles: list[dict[str, float]]) -> dict[str, float]:
        """Tune's bundles, one decode CPU, and the Ray Train worker group or the scoring actor pool,
        whichever is larger (training and scoring never run at once; an auto pool is one actor in a trial)."""
        r = cfg.resources
        scorers = r.trial_score_actors()
        cpu = sum(b.get("CPU", 0.0) for b in bundles) + 1.0 + max(r.num_workers * r.cpus_per_worker, scorers)
        gpu = sum(b.get("GPU", 0.0) for b in bundles) + (max(r.num_workers, scorers) if r.use_gpu else 0)
        return {"CPU": float(cpu), "GPU": float(gpu)}

    @staticmethod
    def classifier(cfg: Any, weights: dict[str, Any], num_classes: int) -> nn.Module:
        """The fine-tuned classifier, built as the scoring actors build it."""
        from hssal_ray.models import model_from_config

        model = model_from_config(cfg, num_classes, with_weights=False)
        model.load_state_dict(weights)
        return model.eval()
