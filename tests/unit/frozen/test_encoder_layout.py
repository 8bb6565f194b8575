"""The frozen encoder runs the backbone in the configured memory format (``ssl.channels_last``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hssal_ray.config import config_to_dict, load_config
from hssal_ray.frozen.encode import Encoder

SMALL = ["ssl.model=hssal_small_cnn", "data.image_size=16", "ssl.finetune=frozen"]


def _encode(channels_last: bool, batch: dict[str, np.ndarray]) -> tuple[Encoder, list[bool], np.ndarray]:
    enc = Encoder(
        config_to_dict(load_config(None, [*SMALL, f"ssl.channels_last={channels_last}"])), ("none",)
    )
    seen: list[bool] = []
    first = next(m for m in enc.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    out = enc(batch)
    return enc, seen, np.asarray(out.column("none").to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("channels_last", [True, False])
def test_encoder_follows_channels_last_with_the_same_features(channels_last: bool) -> None:
    rng = np.random.default_rng(0)
    batch = {
        "sample_id": np.array(["a", "b", "c"]),
        "x_none": rng.normal(size=(3, 3, 16, 16)).astype(np.float32),
    }
    enc, seen, feats = _encode(channels_last, batch)
    weight = next(m for m in enc.backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert seen == [channels_last]  # the input reaches the first convolution in that format too
    _, _, other = _encode(not channels_last, batch)
    np.testing.assert_allclose(feats, other, rtol=1e-2, atol=1e-3)  # fp16 features, fp32 rounding apart


def test_channels_last_is_the_default() -> None:
    assert load_config(None, []).ssl.channels_last is True


def test_auto_encode_pool_uses_the_free_cpus_less_one() -> None:
    from hssal_ray.frozen.encode import encode_pool_size

    n, why = encode_pool_size(0, use_gpu=False, cpus=16.0)
    assert n == 15 and why.startswith("auto") and "16 free CPU(s)" in why
    assert encode_pool_size(0, use_gpu=False, cpus=2.0)[0] == 1  # 2 CPUs: one actor, one CPU for Ray Data
    assert encode_pool_size(0, use_gpu=False, cpus=1.0)[0] == 1  # never fewer than one


def test_auto_encode_pool_counts_the_hosts_cores_and_memory() -> None:
    from hssal_ray.frozen.encode import ENCODE_ACTOR_BYTES, encode_pool_size

    # a local runtime declared with more CPUs than the host has: the host's cores count
    assert encode_pool_size(0, use_gpu=False, cpus=4.0, host_cores=2)[0] == 1
    assert encode_pool_size(0, use_gpu=False, cpus=64.0, host_cores=8)[0] == 7
    # memory for 5 actors on 16 CPUs: 5, and the line says memory decided
    n, why = encode_pool_size(0, use_gpu=False, cpus=16.0, memory=5.5 * ENCODE_ACTOR_BYTES)
    assert n == 5 and "memory for 5" in why
    assert encode_pool_size(0, use_gpu=False, cpus=16.0, memory=0.5 * ENCODE_ACTOR_BYTES)[0] == 1


def test_encode_pool_on_gpus_in_a_trial_and_as_set() -> None:
    from hssal_ray.frozen.encode import encode_pool_size

    assert encode_pool_size(0, use_gpu=True, cpus=16.0, gpus=4.0) == (4, "auto: one per GPU (4 free)")
    assert encode_pool_size(0, use_gpu=True, cpus=16.0, gpus=0.0)[0] == 1
    assert encode_pool_size(0, use_gpu=False, cpus=16.0, in_trial=True)[0] == 1
    assert encode_pool_size(3, use_gpu=False, cpus=16.0) == (3, "resources.encode_actors=3")
    assert encode_pool_size(8, use_gpu=False, cpus=4.0)[0] == 3  # never every CPU (Ray Data would hang)
    assert encode_pool_size(2, use_gpu=True, cpus=1.0, gpus=8.0)[0] == 2


def test_encode_actors_is_validated() -> None:
    from hssal_ray.errors import ConfigError

    assert load_config(None, []).resources.encode_actors == 0
    with pytest.raises(ConfigError, match="encode_actors"):
        load_config(None, ["resources.encode_actors=-1"])
