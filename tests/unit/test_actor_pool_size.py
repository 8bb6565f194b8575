"""Actor pools: never every CPU of a CPU-only cluster (Ray Data would hang); an archive-wide pass (the
frozen encode, predict) sizes its own from the runtime."""

from hssal_ray.scoring import ACTOR_BYTES, actor_pool_size, auto_pool_size


def test_cpu_pool_leaves_one_cpu_for_data_tasks() -> None:
    assert actor_pool_size(1, 2.0, use_gpu=False) == 1
    assert actor_pool_size(2, 2.0, use_gpu=False) == 1
    assert actor_pool_size(8, 4.0, use_gpu=False) == 3
    assert actor_pool_size(3, 8.0, use_gpu=False) == 3


def test_gpu_pool_is_left_alone_and_one_actor_is_the_floor() -> None:
    assert actor_pool_size(4, 2.0, use_gpu=True) == 4
    assert actor_pool_size(2, 1.0, use_gpu=False) == 1


def test_auto_pool_uses_the_free_cpus_less_one() -> None:
    n, why = auto_pool_size(0, use_gpu=False, cpus=16.0)
    assert n == 15 and why == "auto: 16 free CPU(s) less one"
    assert auto_pool_size(0, use_gpu=False, cpus=2.0)[0] == 1  # 2 CPUs: one actor, one CPU for Ray Data
    assert auto_pool_size(0, use_gpu=False, cpus=1.0)[0] == 1  # never fewer than one


def test_auto_pool_counts_the_hosts_cores_and_memory() -> None:
    # a local runtime declared with more CPUs than the host has: the host's cores count
    assert auto_pool_size(0, use_gpu=False, cpus=4.0, host_cores=2)[0] == 1
    assert auto_pool_size(0, use_gpu=False, cpus=64.0, host_cores=8)[0] == 7
    # memory for 5 actors on 16 CPUs: 5, and the reason says memory decided
    n, why = auto_pool_size(0, use_gpu=False, cpus=16.0, memory=5.5 * ACTOR_BYTES)
    assert n == 5 and "memory for 5" in why
    assert auto_pool_size(0, use_gpu=False, cpus=16.0, memory=0.5 * ACTOR_BYTES)[0] == 1


def test_pool_on_gpus_in_a_trial_and_as_set() -> None:
    assert auto_pool_size(0, use_gpu=True, cpus=16.0, gpus=4.0) == (4, "auto: one per GPU (4 free)")
    assert auto_pool_size(0, use_gpu=True, cpus=16.0, gpus=0.0)[0] == 1
    assert auto_pool_size(0, use_gpu=False, cpus=16.0, in_trial=True)[0] == 1
    assert auto_pool_size(3, use_gpu=False, cpus=16.0) == (3, "set to 3")
    assert auto_pool_size(8, use_gpu=False, cpus=4.0)[0] == 3  # never every CPU (Ray Data would hang)
    assert auto_pool_size(2, use_gpu=True, cpus=1.0, gpus=8.0)[0] == 2


def test_auto_pool_is_at_most_one_actor_per_block() -> None:
    """A small stream (a test split, a few images to predict) on a large machine: one actor per block,
    not one per CPU that would each load the model and wait; a size set by hand is kept."""
    from hssal_ray.data.pipeline import stream_blocks

    assert stream_blocks(420, 64) == 2 and stream_blocks(256, 64) == 1 and stream_blocks(257, 64) == 2
    assert stream_blocks(100, 64, rows_per_block=10) == 10
    n, why = auto_pool_size(0, use_gpu=False, cpus=64.0, blocks=2)
    assert n == 2 and why == "auto: 64 free CPU(s) less one, at most one per block of the stream (2)"
    assert auto_pool_size(0, use_gpu=True, cpus=64.0, gpus=8.0, blocks=3)[0] == 3
    assert auto_pool_size(0, use_gpu=False, cpus=64.0, blocks=0)[0] == 1
    assert auto_pool_size(0, use_gpu=False, cpus=8.0, blocks=100)[0] == 7
    assert auto_pool_size(5, use_gpu=False, cpus=64.0, blocks=2)[0] == 5


def test_score_actors_auto_is_the_default_and_keeps_one_machine_in_the_driver(monkeypatch) -> None:
    """``resources.score_actors: 0`` (auto) sizes the image path's scoring pool from the runtime; on one
    machine with one CPU worker the auto executor still scores in the driver; a trial counts one actor."""
    import pytest

    from hssal_ray.config import load_config
    from hssal_ray.errors import ConfigError
    from hssal_ray.learners.image import ImageLearner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, [])
    assert cfg.resources.score_actors == 0 and cfg.resources.in_driver()
    assert load_config(None, ["resources.score_actors=1"]).resources.in_driver()
    assert not load_config(None, ["resources.score_actors=2"]).resources.in_driver()
    assert not load_config(None, ["resources.address=auto"]).resources.in_driver()
    with pytest.raises(ConfigError, match="score_actors"):
        load_config(None, ["resources.score_actors=-1"])
    bundles = [{"CPU": 1.0}]
    auto = load_config(None, ["resources.use_gpu=true", "resources.num_workers=1"])
    assert ImageLearner.trial_footprint(auto, bundles) == {"CPU": 1.0 + 1.0 + 1.0, "GPU": 1.0}
    three = load_config(None, ["resources.use_gpu=true", "resources.score_actors=3"])
    assert ImageLearner.trial_footprint(three, bundles) == {"CPU": 1.0 + 1.0 + 3.0, "GPU": 3.0}
