"""The frozen path's head: L2 feature normalisation and test-time view averaging (plain torch/numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hssal_ray.config import load_config
from hssal_ray.errors import ConfigError
from hssal_ray.frozen.head import L2Normalize, build_head, head_predict, predict_views, train_head


def _cfg(*over: str):
    return load_config(
        None,
        ["ssl.finetune=frozen", "ssl.steps_per_round=30", "ssl.batch_size=8", "ssl.enabled=false", *over],
    )


def _views(n: int = 60, d: int = 8, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = rng.normal(size=(3, d)) * 3
    clean = centers[y] + rng.normal(size=(n, d))
    # Each row has its own scale: only the direction carries the class.
    scale = rng.uniform(0.2, 5.0, size=(n, 1))
    views = {"none": clean * scale}
    for i in range(2):
        views[f"weak_{i}"] = (clean + 0.1 * rng.normal(size=(n, d))) * scale
        views[f"strong_{i}"] = (clean + 0.5 * rng.normal(size=(n, d))) * scale
    return {k: v.astype(np.float16) for k, v in views.items()}, y


def test_l2_head_ignores_each_feature_vectors_scale() -> None:
    views, y = _views()
    rows = np.arange(60)
    state, _ = train_head(_cfg(), views, rows[:30], y[:30], rows[30:], None, 3, stats_rows=rows, seed=0)
    head = state.ema.module.eval()
    assert isinstance(head[0], L2Normalize)
    x = torch.from_numpy(views["none"].astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(head(x), head(7.0 * x), atol=1e-5)
    # Without normalisation the head is not scale-invariant (the test would catch a no-op option).
    plain, _ = train_head(
        _cfg("frozen.feature_norm=none"),
        views,
        rows[:30],
        y[:30],
        rows[30:],
        None,
        3,
        stats_rows=rows,
        seed=0,
    )
    with torch.no_grad():
        assert not torch.allclose(plain.ema.module(x), plain.ema.module(7.0 * x), atol=1e-3)


def test_predict_views_averages_clean_and_weak_views() -> None:
    views, _ = _views()
    head = build_head(_cfg(), 8, 3).eval()
    rows = np.array([3, 1, 4])
    from hssal_ray.frozen.head import head_predict

    want = (
        head_predict(head, views["none"][rows])
        + head_predict(head, views["weak_0"][rows])
        + head_predict(head, views["weak_1"][rows])
    ) / 3
    np.testing.assert_allclose(predict_views(head, views, rows, 2), want, rtol=1e-6)
    np.testing.assert_allclose(predict_views(head, views, rows, 0), head_predict(head, views["none"][rows]))


def test_tta_views_is_checked() -> None:
    with pytest.raises(ConfigError, match="tta_views"):
        _cfg("frozen.tta_views=3")  # more than the 2 stored weak views
    with pytest.raises(ConfigError, match="finetune=frozen"):
        load_config(None, ["frozen.tta_views=1"])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("norm", ["l2", "none"])
def test_folded_inference_equals_the_module(kind: str, norm: str) -> None:
    """Predictions fold normalisation and standardisation into one product: the module's outputs."""
    from hssal_ray.frozen.infer import _Forward

    cfg = _cfg(f"ssl.head={kind}", f"frozen.feature_norm={norm}", "ssl.head_hidden=16")
    torch.manual_seed(0)
    stats = (torch.randn(8) * 0.1, torch.rand(8) + 0.5)
    head = build_head(cfg, 8, 3, stats=stats).eval()
    if kind == "mlp":  # BatchNorm with statistics of its own
        head[-1][1].running_mean.normal_()
        head[-1][1].running_var.uniform_(0.5, 2.0)
    views, _ = _views(n=2500)  # more rows than one folded block
    x = views["none"]
    with torch.no_grad():
        want = torch.softmax(head(torch.from_numpy(x.astype(np.float32))), 1).numpy()
    np.testing.assert_allclose(head_predict(head, x, batch=1000), want, atol=1e-5)
    emb = np.empty(x.shape, np.float16)
    _Forward(head)(x, emb)
    unit = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    np.testing.assert_allclose(emb.astype(np.float32), unit, atol=1e-3)


def test_training_on_store_files_equals_training_on_arrays(tmp_path) -> None:
    """Batches read with pread from a store's files train the same head as in-memory views."""
    from hssal_ray.frozen.store import file_backed, open_store, view_names, write_arrays

    views, y = _views()
    names = view_names(2)
    meta = {"key": "t", "views": list(names), "rows": 60, "complete": True}
    write_arrays(str(tmp_path), [f"i{j:02d}" for j in range(60)], [views], names, meta=meta)
    store = open_store(str(tmp_path))
    assert all(file_backed(v) for v in store.views.values()) and not file_backed(views["none"])
    rows = np.arange(60)
    cfg = _cfg("ssl.enabled=true")
    args = (rows[:30], y[:30], rows[30:], None, 3)
    a, _ = train_head(cfg, views, *args, stats_rows=rows, seed=3)
    b, _ = train_head(cfg, store.views, *args, stats_rows=rows, seed=3)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
