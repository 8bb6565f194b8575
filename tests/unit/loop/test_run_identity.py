"""A run's identity (``science_sha``) leaves out the keys the run never reads (no Ray).

Changing an unused key keeps the run the same run; changing a used one makes it another. A run
directory whose ``state.json`` holds the identity of the former rule (every science field) resumes
and gets the new one; a config whose science really differs is still refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hssal_ray.cli import SMOKE_OVERRIDES
from hssal_ray.config import ExperimentConfig, load_config
from hssal_ray.errors import StateError
from hssal_ray.loop.run_config import legacy_science_sha, science_sha, unused_keys
from hssal_ray.loop.runner import LoopRunner
from hssal_ray.query import strategy_from_config
from hssal_ray.state import RunState

from ..query._data import blob_pool

FROZEN = ["ssl.finetune=frozen"]
GRAPH = [*FROZEN, "frozen.pseudo_labels=graph"]


@pytest.mark.parametrize(
    ("base", "change"),
    [
        (["query.strategy=margin"], "query.alloc_temper=0.5"),
        (["query.strategy=margin"], "query.kmeans_iters=5"),
        (["query.strategy=margin"], "query.ssl_aware=true"),
        (["query.strategy=random"], "query.pick=typical"),
        (["query.pick=typical"], "query.typical_until=5"),
        (["query.pick=typical"], "query.late_uncertainty=margin"),
        (["query.pick=eer"], "query.late_pick=eer"),
        (["query.pick=typical"], "query.early_pick=cover"),
        (["query.pick=auto"], "query.cover_by=uncertainty"),
        (["query.strategy=margin"], "query.cover_by=uncertainty"),
        (["query.strategy=hal_flat"], "query.coarse_k=4"),
        (["query.strategy=hal_flat"], "query.alloc_temper=0.2"),
        (["query.strategy=hal_flat"], "query.alloc_over=candidates"),
        (["query.strategy=margin"], "query.alloc_over=candidates"),
        (["query.strategy=hal_flat"], "query.coarse_fit_sample=500"),
        ([], "frozen.graph_k=3"),
        ([], "frozen.feature_norm=none"),
        ([], "frozen.embed_views=4"),
        (FROZEN, "frozen.graph_alpha=0.5"),
        (FROZEN, "resources.num_workers=2"),
        (FROZEN, "ssl.trainable_stages=2"),
        ([], "ssl.trainable_stages=2"),
        ([], "ssl.head_hidden=64"),
    ],
)
def test_an_unused_key_leaves_the_identity(base: list[str], change: str) -> None:
    assert change.split("=")[0] in unused_keys(load_config(None, base))
    assert science_sha(load_config(None, [*base, change])) == science_sha(load_config(None, base))


@pytest.mark.parametrize(
    ("base", "change"),
    [
        ([], "query.alloc_temper=0.5"),
        ([], "query.alloc_over=candidates"),
        (["query.strategy=hal_flat"], "query.candidate_ratio=2"),
        (["query.pick=auto"], "query.typical_until=5"),
        (["query.pick=auto"], "query.late_uncertainty=margin"),
        (["query.strategy=hal_flat", "query.pick=auto"], "query.late_uncertainty=margin"),
        (["query.pick=auto"], "query.late_pick=eer"),
        (["query.pick=auto"], "query.early_pick=cover"),
        (["query.pick=cover"], "query.cover_by=uncertainty"),
        (["query.pick=auto", "query.early_pick=cover"], "query.cover_by=uncertainty"),
        (["query.strategy=margin"], "query.budget=7"),
        (["query.strategy=margin"], "query.uncertainty=entropy"),  # the score recorded per query
        (["query.strategy=margin", "loop.cold_start=typiclust"], "query.kmeans_iters=5"),
        (["query.strategy=typiclust"], "query.kmeans_backend=torch"),
        (GRAPH, "frozen.graph_k=3"),
        (FROZEN, "frozen.feature_norm=none"),
        (FROZEN, "frozen.embed_views=4"),
        ([], "resources.num_workers=2"),
        (["ssl.finetune=partial"], "ssl.trainable_stages=2"),
        (["ssl.head=mlp"], "ssl.head_hidden=64"),
        (FROZEN, "ssl.lr=0.1"),
        ([], "seed=3"),
    ],
)
def test_a_used_key_changes_the_identity(base: list[str], change: str) -> None:
    assert change.split("=")[0] not in unused_keys(load_config(None, base))
    assert science_sha(load_config(None, [*base, change])) != science_sha(load_config(None, base))


def test_unused_keys_keep_the_added_marker() -> None:
    """A field added later (``query.typical_until``) is still left out at its default when used."""
    auto = load_config(None, ["query.pick=auto"])
    assert science_sha(auto) == science_sha(load_config(None, ["query.pick=auto", "query.typical_until=3.0"]))
    assert legacy_science_sha(load_config(None)) != science_sha(load_config(None))  # frozen keys left out


def test_hal_flat_reads_none_of_the_keys_left_out_of_its_identity() -> None:
    """What makes ``hal_flat``'s exclusions true: its picks do not move with those keys."""
    pool, _ = blob_pool(n=300, seed=1)
    cfg = load_config(None, ["query.strategy=hal_flat", "query.kmeans_backend=torch"])

    def picks(*changes: str) -> np.ndarray:
        q = load_config(None, ["query.strategy=hal_flat", "query.kmeans_backend=torch", *changes]).query
        return strategy_from_config(q, random_state=7).select(pool, 12)

    base = picks()
    flat_ignores = {"query.coarse_k", "query.alloc_temper", "query.alloc_over", "query.coarse_fit_sample"}
    assert flat_ignores <= unused_keys(cfg)
    np.testing.assert_array_equal(
        picks("query.coarse_k=5", "query.alloc_temper=0.0", "query.alloc_over=candidates"), base
    )
    np.testing.assert_array_equal(picks("query.coarse_fit_sample=100"), base)
    assert not np.array_equal(picks("query.candidate_ratio=1.0", "query.uncertainty=entropy"), base)


def _legacy_run(tmp_path: Path, *overrides: str) -> tuple[Path, ExperimentConfig]:
    """A new run's directory (round 0, before its cold start) whose state holds the former identity."""
    cfg = load_config(None, [*SMOKE_OVERRIDES, f"loop.run_dir={tmp_path}", "loop.name=r", *overrides])
    run = Path(cfg.run_path)
    run.mkdir(parents=True)
    RunState(config_sha=legacy_science_sha(cfg), run_id="id").save(str(run))
    return run, cfg


def test_a_run_with_the_former_identity_resumes_and_gets_the_new_one(tmp_path: Path) -> None:
    run, cfg = _legacy_run(tmp_path, "query.strategy=margin", "query.alloc_temper=0.5")
    assert legacy_science_sha(cfg) != science_sha(cfg)
    state = LoopRunner(cfg, progress=lambda s: None)._setup()
    saved = json.loads((run / "state.json").read_text())
    assert state.config_sha == saved["config_sha"] == science_sha(cfg)
    assert saved["run_id"] == "id" and saved["stage"] == "init"
    # from now on, the unused key may change
    other = load_config(
        None, [*SMOKE_OVERRIDES, f"loop.run_dir={tmp_path}", "loop.name=r", "query.strategy=margin"]
    )
    assert LoopRunner(other, progress=lambda s: None)._setup().config_sha == science_sha(cfg)


def test_a_different_config_is_still_refused(tmp_path: Path) -> None:
    run, cfg = _legacy_run(tmp_path)
    before = (run / "state.json").read_bytes()
    for change in ("query.budget=4", "ssl.lr=0.1"):
        other = load_config(None, [*SMOKE_OVERRIDES, f"loop.run_dir={tmp_path}", "loop.name=r", change])
        with pytest.raises(StateError, match="started with a different config"):
            LoopRunner(other, progress=lambda s: None)._setup()
    assert (run / "state.json").read_bytes() == before


def test_the_stop_rule_is_a_runtime_setting() -> None:
    """Like ``loop.rounds``: a resume may switch ``loop.stop_kappa`` on without a new run identity."""
    on = load_config(None, ["loop.stop_kappa=0.99", "loop.stop_window=2"])
    assert science_sha(on) == science_sha(load_config(None))
