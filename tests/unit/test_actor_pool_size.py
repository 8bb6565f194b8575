"""Scoring actors never take every CPU of a CPU-only cluster (Ray Data would hang)."""

from hssal_ray.scoring import actor_pool_size


def test_cpu_pool_leaves_one_cpu_for_data_tasks() -> None:
    assert actor_pool_size(1, 2.0, use_gpu=False) == 1
    assert actor_pool_size(2, 2.0, use_gpu=False) == 1
    assert actor_pool_size(8, 4.0, use_gpu=False) == 3
    assert actor_pool_size(3, 8.0, use_gpu=False) == 3


def test_gpu_pool_is_left_alone_and_one_actor_is_the_floor() -> None:
    assert actor_pool_size(4, 2.0, use_gpu=True) == 4
    assert actor_pool_size(2, 1.0, use_gpu=False) == 1
