"""Packaged pretrained weights: the checked in-order mapping, the errors, their normalisation, regimes."""

from __future__ import annotations

import pytest
import torch

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.models import model_from_config
from hssal_ray.packaged_weights import PACKAGED, map_in_order, normalisation, packaged

LITE0 = ["ssl.model=efficientnet_lite0", "ssl.weights=package:efficientnet_lite0"]


def _file_state() -> dict[str, torch.Tensor]:
    return torch.load(PACKAGED["efficientnet_lite0"].path(), map_location="cpu", weights_only=True)


def test_packaged_weights_load_every_tensor_into_the_timm_model() -> None:
    model = model_from_config(load_config(None, LITE0), num_classes=21)
    src = list(_file_state().values())
    mine = list(model.backbone.state_dict().values())
    assert len(src) == 296 and len(mine) == 294  # the ImageNet head (2 tensors) is dropped
    for a, b in zip(src[:-2], mine, strict=True):
        assert torch.equal(a.to(b.dtype), b)
    assert model.head.out_features == 21


def test_a_wrong_shape_fails_naming_the_tensor() -> None:
    import timm

    src = _file_state()
    key = list(src)[7]
    src[key] = torch.zeros(3, 3)
    target = timm.create_model("efficientnet_lite0").state_dict()
    with pytest.raises(ConfigError, match=rf"tensor '{key}' \(3, 3\) does not fit the model's"):
        map_in_order(src, target, "classifier.", "lite0.pth")
    with pytest.raises(ConfigError, match="hold 295 tensors"):
        map_in_order(dict(list(_file_state().items())[1:]), target, "classifier.", "lite0.pth")


def test_wrong_arch_unknown_name_and_normalisation() -> None:
    with pytest.raises(ConfigError, match="set ssl.model=efficientnet_lite0"):
        model_from_config(load_config(None, ["ssl.model=resnet18", LITE0[1]]), 3)
    with pytest.raises(ConfigError, match="unknown packaged weights 'nope'"):
        packaged("package:nope")
    cfg = load_config(None, LITE0)
    assert normalisation(cfg) == ([0.5] * 3, [0.5] * 3)  # the weights' own
    cfg = load_config(None, [*LITE0, "data.mean=[0.4,0.4,0.4]"])
    assert normalisation(cfg) == ([0.4] * 3, [0.5] * 3)  # explicit data.mean wins
    assert normalisation(load_config(None, [])) == (None, None)  # pipeline defaults


def test_four_band_input_adapts_the_stem() -> None:
    model = model_from_config(load_config(None, [*LITE0, "data.bands=4"]), 2)
    assert model.backbone.conv_stem.weight.shape[1] == 4
    assert model.eval()(torch.randn(1, 4, 32, 32)).shape == (1, 2)


def test_regimes_freeze_the_right_parameters_and_keep_frozen_bn_in_eval() -> None:
    partial = model_from_config(
        load_config(None, [*LITE0, "ssl.finetune=partial", "ssl.trainable_stages=1"]), 5
    )
    trainable = {n for n, p in partial.named_parameters() if p.requires_grad}
    assert all(
        n.startswith(("backbone.blocks.6.", "backbone.conv_head", "backbone.bn2", "head.")) for n in trainable
    )
    assert "backbone.blocks.6.0.conv_pw.weight" in trainable and "head.weight" in trainable
    partial.train()
    assert not partial.backbone.bn1.training and not partial.backbone.blocks[5][0].bn1.training
    assert partial.backbone.bn2.training and partial.head.training
    frozen = model_from_config(load_config(None, [*LITE0, "ssl.finetune=frozen", "ssl.head=mlp"]), 5)
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"head"}
    with pytest.raises(ConfigError, match="trainable_stages=9"):
        model_from_config(load_config(None, [*LITE0, "ssl.finetune=partial", "ssl.trainable_stages=9"]), 5)


def test_frozen_vit_freezes_tokens_and_position_embeddings_too() -> None:
    cfg = load_config(
        "configs/ucm_dinov2.yaml", ["ssl.pretrained_hub=false", "ssl.model_kwargs={img_size: 28, depth: 2}"]
    )
    frozen = model_from_config(cfg, 4)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    part = model_from_config(
        load_config(
            "configs/ucm_dinov2.yaml",
            ["ssl.pretrained_hub=false", "ssl.model_kwargs={img_size: 28, depth: 2}", "ssl.finetune=partial"],
        ),
        4,
    )
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert "backbone.pos_embed" not in trainable and "backbone.cls_token" not in trainable
    assert any(n.startswith("backbone.blocks.1.") for n in trainable)
    assert not any(n.startswith("backbone.blocks.0.") for n in trainable)
