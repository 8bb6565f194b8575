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


def test_encode_actors_is_validated() -> None:
    from hssal_ray.errors import ConfigError

    assert load_config(None, []).resources.encode_actors == 0
    with pytest.raises(ConfigError, match="encode_actors"):
        load_config(None, ["resources.encode_actors=-1"])
