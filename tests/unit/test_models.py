"""Tests of hssal_ray.models: building backbones, forward shapes, local weights loading."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from hssal_ray.errors import ConfigError
from hssal_ray.models import Classifier, build_model, load_weights, unwrap_model


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared 2-core machine, OpenMP spinning makes 2 threads ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_small_cnn_forward_and_embedding() -> None:
    model = build_model("hssal_small_cnn", num_classes=5, in_chans=13)
    x = torch.randn(4, 13, 16, 16)
    logits = model(x)
    emb, logits2 = model.forward_features_logits(x)
    assert logits.shape == (4, 5)
    assert emb.shape == (4, model.embed_dim) == (4, 256)
    model.eval()
    torch.testing.assert_close(model(x), model.head(model.backbone(x)))


def test_timm_resnet_multispectral() -> None:
    model = build_model("resnet18", num_classes=3, in_chans=13)
    assert model.embed_dim == 512
    emb, logits = model.forward_features_logits(torch.randn(2, 13, 32, 32))
    assert emb.shape == (2, 512) and logits.shape == (2, 3)


def test_dinov2_vit_small_builds_and_forwards() -> None:
    model = build_model("vit_small_patch14_dinov2.lvd142m", num_classes=4, in_chans=3, img_size=28)
    assert model.embed_dim == 384
    emb, logits = model.forward_features_logits(torch.randn(2, 3, 28, 28))
    assert emb.shape == (2, 384) and logits.shape == (2, 4)
    assert "backbone.pos_embed" in model.no_weight_decay()


def test_unknown_name_and_bad_kwargs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("no_such_net_xyz", num_classes=2)
    with pytest.raises(ConfigError, match="keyword"):
        build_model("hssal_small_cnn", num_classes=2, bogus=1)
    with pytest.raises(ConfigError, match="not both"):
        build_model("resnet18", num_classes=2, weights="x.pt", pretrained_hub=True)


def save_weights(model, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_full_state_dict_round_trip_safetensors_and_pt(tmp_path) -> None:
    src = build_model("hssal_small_cnn", num_classes=3, in_chans=4)
    src.eval()
    path = tmp_path / "w.safetensors"
    save_weights(src, path)
    dst = build_model("hssal_small_cnn", num_classes=3, in_chans=4, weights=str(path))
    dst.eval()
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(dst(x), src(x))
    # DDP-style prefixes in a torch file are removed.
    pt = tmp_path / "w.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, pt)
    dst2 = build_model("hssal_small_cnn", num_classes=3, in_chans=4)
    res = load_weights(dst2, pt)
    assert res.matched == len(src.backbone.state_dict()) and not res.missing and not res.dropped
    dst2.eval()
    torch.testing.assert_close(dst2(x), src(x))


def test_mismatched_head_is_dropped(tmp_path, caplog) -> None:
    src = build_model("hssal_small_cnn", num_classes=10)
    path = tmp_path / "w.safetensors"
    save_weights(src, path)
    dst = build_model("hssal_small_cnn", num_classes=3)
    head_before = dst.head.weight.clone()
    with caplog.at_level(logging.WARNING):
        res = load_weights(dst, path)
    assert sorted(res.dropped) == ["head.bias", "head.weight"]
    torch.testing.assert_close(dst.head.weight, head_before)
    torch.testing.assert_close(dst.backbone.features[0].weight, src.backbone.features[0].weight)


def test_backbone_only_resnet_adapts_input_channels(tmp_path) -> None:
    import timm

    rgb = timm.create_model("resnet18", num_classes=1000, in_chans=3)
    path = tmp_path / "r18.pth"
    torch.save(rgb.state_dict(), path)  # timm layout, with its own 1000-class fc
    model = build_model("resnet18", num_classes=2, in_chans=13, weights=str(path))
    w3 = rgb.conv1.weight
    expected = w3.repeat(1, 5, 1, 1)[:, :13] * (3 / 13)
    torch.testing.assert_close(model.backbone.conv1.weight, expected)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


def test_dinov2_original_layout_resamples_pos_embed_and_channels(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=28, depth=2)  # shallow: fast
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)  # present in facebook's DINOv2 checkpoints
    path = tmp_path / "dinov2.safetensors"
    save_file(state, str(path))
    model = build_model("vit_small_patch14_dinov2", num_classes=2, in_chans=5, img_size=42, depth=2)
    res = load_weights(model, path)
    assert "patch_embed.proj.weight" in res.adapted and "pos_embed" in res.adapted
    assert model.backbone.pos_embed.shape == (1, 1 + 9, 384)
    torch.testing.assert_close(model.backbone.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert model(torch.randn(1, 5, 42, 42)).shape == (1, 2)


def test_no_matching_keys_and_bad_files_raise(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    model = build_model("hssal_small_cnn", num_classes=2)
    with pytest.raises(ConfigError, match="no backbone tensor"):
        load_weights(model, path)
    with pytest.raises(ConfigError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unsupported"):
        load_weights(model, bad)
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read"):
        load_weights(model, corrupt)


def test_unwrap_model_handles_wrappers() -> None:
    inner = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self._orig_mod = m

    assert unwrap_model(Wrapper(inner)) is inner
    assert unwrap_model(nn.DataParallel(inner)) is inner
    assert isinstance(build_model("hssal_small_cnn", 2), Classifier)


def test_weight_files_does_not_import_models() -> None:
    """``models`` uses ``weight_files``, never the other way round (no import cycle)."""
    import ast
    from pathlib import Path

    import hssal_ray.weight_files as wf

    tree = ast.parse(Path(wf.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("hssal_ray.models")}
    assert unwrap_model is wf.unwrap_model
