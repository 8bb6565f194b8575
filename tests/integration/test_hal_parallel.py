"""``query.parallel``: HAL's per-coarse-cluster steps as Ray tasks pick the batch the driver would."""

from __future__ import annotations

import numpy as np
import pytest

from hssal_ray.loop.query_batch import ray_map
from hssal_ray.query import HierarchicalQuery, Pool
from tests.unit.query._data import blob_pool, with_labeled

pytestmark = pytest.mark.ray

#: the profile's query (configs/ucm_cpu.yaml) on a 5-class blob pool
PROFILE = {
    "uncertainty": "margin",
    "candidate_ratio": 10,
    "late_candidate_ratio": 3,
    "pick": "auto",
    "typical_until": 3.5,
    "alloc_over": "global",
    "boundary_check": True,
    "typical_scale": "flat",
    "coarse_k": 6,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def ray_local():  # type: ignore[no-untyped-def]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _pool(n_labeled: int) -> Pool:
    pool, _ = blob_pool(n=800, seed=5)
    return with_labeled(pool, np.random.default_rng(1).choice(len(pool), n_labeled, replace=False))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"fine_space": "late"},
        {"copy_check": "late", "cover_labeled": True},
        {"cover_labeled": True, "cover_scale": "flat"},
    ],
)
def test_ray_tasks_pick_what_the_driver_picks(ray_local, extra: dict) -> None:
    calls: list[int] = []

    def counted(fn, *its):  # type: ignore[no-untyped-def]
        out = ray_map(fn, *its)
        calls.append(len(out))
        return out

    for n_labeled in (10, 40):  # 2 and 8 labels per class: a typical round, then an uncertain one
        pool = _pool(n_labeled)
        calls.clear()
        serial = HierarchicalQuery(**PROFILE, **extra).select(pool, 24)
        remote = HierarchicalQuery(**PROFILE, **extra, map_fn=counted).select(pool, 24)
        assert calls and calls[0] > 1  # the fine problems really went out as several tasks
        np.testing.assert_array_equal(remote, serial)
        assert len(np.unique(serial)) == 24 and not pool.exclude[serial].any()
