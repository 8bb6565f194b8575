"""Known-answer tests of ModelEMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hssal_ray.errors import ConfigError, StateError
from hssal_ray.ssl.ema import ModelEMA


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared 2-core machine, OpenMP spinning makes 2 threads ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))


def test_one_update_known_answer_and_buffers_copied() -> None:
    model = _model()
    ema = ModelEMA(model, ema_m=0.9)
    p0 = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 2, 2, 2))  # changes the BatchNorm running statistics
    ema.update(model)
    for e, a, b in zip(ema.module.parameters(), p0, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * a + 0.1 * b)
        assert not e.requires_grad
    for e, b in zip(ema.module.buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(e, b)
    assert not ema.module.training


def test_ema_is_independent_copy_and_state_round_trip() -> None:
    model = _model()
    ema = ModelEMA(model, ema_m=0.5)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    assert not torch.equal(ema.module[0].weight, model[0].weight)
    ema.update(model)
    other = ModelEMA(_model(), ema_m=0.5)
    other.load_state_dict(ema.state_dict())
    x = torch.randn(3, 2, 2, 2)
    torch.testing.assert_close(other.module(x), ema.module(x))


def test_wrapped_online_model(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        ema = ModelEMA(ddp, ema_m=0.0)  # m = 0: the EMA equals the online weights after an update
        assert not any(k.startswith("module.") for k in ema.state_dict())
        with torch.no_grad():
            model[3].bias.fill_(3.0)
        ema.update(ddp)
        torch.testing.assert_close(ema.module[3].bias, torch.full((2,), 3.0))
    finally:
        dist.destroy_process_group()


def test_errors() -> None:
    with pytest.raises(ConfigError):
        ModelEMA(_model(), ema_m=1.0)
    with pytest.raises(StateError):
        ModelEMA(_model()).update(nn.Linear(2, 2))
