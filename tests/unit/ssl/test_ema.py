"""The EMA evaluation model (timm ``ModelEmaV3`` with warm-up) and its diagnostics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hssal_ray.errors import ConfigError
from hssal_ray.ssl.ema import build_ema, ema_decay, ema_initial_weight


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared 2-core machine, OpenMP spinning makes 2 threads ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 2, 2, 2))  # changes the BatchNorm running statistics


def test_first_update_copies_then_known_answer_with_buffers_averaged() -> None:
    model = _model()
    ema = build_ema(model, 0.9, warmup=False)
    _perturb(model)
    ema.update(model, step=1)  # the first update of a run copies the model (decay 0)
    for e, b in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(e, b)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    _perturb(model)
    ema.update(model, step=2)
    for k, v in model.state_dict().items():
        if v.is_floating_point():  # parameters AND BatchNorm statistics are averaged
            torch.testing.assert_close(ema.module.state_dict()[k], 0.9 * before[k] + 0.1 * v)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_warmup_decay_matches_timm_and_continues_across_rounds() -> None:
    ema = build_ema(_model(), 0.999, warmup=True)
    for step in (1, 2, 10, 200, 5000, 10**6):
        assert ema_decay(step, 0.999) == pytest.approx(ema.get_decay(step))
    # a second warm-started round continues the step count: its decay is higher than a fresh round's
    assert ema_decay(201, 0.999) > ema_decay(2, 0.999)


def test_initial_weight_short_rounds() -> None:
    # without warm-up 200 steps of m=0.999 leave 0.82 of the starting weights: the bug this fixes
    assert ema_initial_weight(0, 200, 0.999, warmup=False) == pytest.approx(0.999**200)
    # with warm-up the first update copies the model, and a warm-started round forgets the old EMA fast
    assert ema_initial_weight(0, 200, 0.999) == 0.0
    w = ema_initial_weight(200, 400, 0.999)
    assert 0.0 < w < 0.01
    assert ema_initial_weight(5, 5, 0.999) == 1.0


def test_short_training_ema_tracks_online_model() -> None:
    """On a 100-step regression the warm-up EMA ends near the online weights; the plain EMA does not."""
    torch.manual_seed(0)
    x, w_true = torch.randn(256, 8), torch.randn(8, 1)
    y = x @ w_true
    model = nn.Linear(8, 1)
    warm, plain = build_ema(model, 0.999), build_ema(model, 0.999, warmup=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 101):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        warm.update(model, step=step)
        plain.update(model, step=step + 1)  # never the copying first step: the old, broken behaviour

    def loss(m: nn.Module) -> float:
        return float(nn.functional.mse_loss(m(x), y))

    assert loss(warm.module) < 0.05 * loss(plain.module)


def test_wrapped_online_model(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = build_ema(ddp, 0.5)
        assert not any(k.startswith("module.") for k in ema.module.state_dict())
        with torch.no_grad():
            model[3].bias.fill_(3.0)
        ema.update(model, step=1)
        torch.testing.assert_close(ema.module[3].bias, torch.full((2,), 3.0))
    finally:
        dist.destroy_process_group()


def test_errors() -> None:
    with pytest.raises(ConfigError):
        build_ema(_model(), 1.0)
    with pytest.raises(ConfigError):
        build_ema(_model(), 0.9, warmup_power=0.0)
