"""Shared builders of the frozen-path graph tests: a graph-label config and seeded noisy views."""

from __future__ import annotations

import numpy as np

from hssal_ray.config import load_config


def graph_cfg(*over: str, steps: int = 40):
    """A frozen-path config with graph pseudo-labels, ``steps`` head steps a round, batch 8."""
    return load_config(
        None,
        [
            "ssl.finetune=frozen",
            f"ssl.steps_per_round={steps}",
            "ssl.batch_size=8",
            "frozen.pseudo_labels=graph",
            *over,
        ],
    )


def noisy_views(x: np.ndarray, weak: float, strong: float, seed: int = 0) -> dict[str, np.ndarray]:
    """The store's views of ``x`` (float16): clean, 2 weak (``weak`` noise std), 2 strong (``strong``)."""
    rng = np.random.default_rng(seed)
    views = {"none": x}
    for i in range(2):
        views[f"weak_{i}"] = x + weak * rng.normal(size=x.shape)
        views[f"strong_{i}"] = x + strong * rng.normal(size=x.shape)
    return {k: v.astype(np.float16) for k, v in views.items()}
