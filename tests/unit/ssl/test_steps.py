"""Training-step tests: optimiser and schedule, FixMatch overfit on stripes, checkpoint round trip."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hssal_ray.errors import ConfigError, DataError, HSSALError, StateError
from hssal_ray.models import build_model
from hssal_ray.ssl.evaluation import evaluate, predict
from hssal_ray.ssl.fixmatch import FreeMatchThresholds
from hssal_ray.ssl.optim import build_optimizer, build_scheduler
from hssal_ray.ssl.steps import TrainState, prepare_model, train_step


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared 2-core machine, OpenMP spinning makes 2 threads ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIZE = 16


def _cfg(**overrides: object) -> SimpleNamespace:
    base = dict(p_cutoff=0.9, lambda_u=1.0, T=1.0, ema_m=0.9, threshold_mode="fixed", dist_align=False)
    return SimpleNamespace(**{**base, **overrides})


def _stripes(n: int, gen: torch.Generator, balanced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: vertical stripes, class 1: horizontal stripes, random phase, 3 channels, (n, 3, 16, 16)."""
    y = torch.arange(n) % 2 if balanced else torch.randint(0, 2, (n,), generator=gen)
    phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    grid = torch.arange(SIZE, dtype=torch.float32) * (2 * math.pi / 8)
    vertical = torch.sin(grid.view(1, 1, SIZE) + phase).expand(n, SIZE, SIZE)
    horizontal = torch.sin(grid.view(1, SIZE, 1) + phase).expand(n, SIZE, SIZE)
    x = torch.where(y.view(n, 1, 1) == 0, vertical, horizontal).unsqueeze(1).repeat(1, 3, 1, 1)
    return x + 0.1 * torch.randn(x.shape, generator=gen), y


def _weak(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x + 0.05 * torch.randn(x.shape, generator=gen)


def _strong(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = _weak(x, gen) + 0.4 * torch.randn(x.shape, generator=gen)
    out = x.clone()
    for i in range(x.shape[0]):  # Cutout 6x6
        r, c = torch.randint(0, SIZE - 6, (2,), generator=gen).tolist()
        out[i, :, r : r + 6, c : c + 6] = 0.0
    return out


def _state(cfg: SimpleNamespace, total_steps: int, seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    model = build_model("hssal_small_cnn", num_classes=2, widths=(16, 32, 64, 128))  # half width: fast
    optimizer = build_optimizer(model, lr=0.03)
    return TrainState.create(model, optimizer, build_scheduler(optimizer, total_steps), cfg)


def _batches(gen: torch.Generator, x_l, y_l, x_u, y_u, b_l=8, b_u=16):  # type: ignore[no-untyped-def]
    il = torch.randint(0, len(x_l), (b_l,), generator=gen)
    iu = torch.randint(0, len(x_u), (b_u,), generator=gen)
    batch_l = {"x": _weak(x_l[il], gen), "y": y_l[il]}
    batch_u = {"x_weak": _weak(x_u[iu], gen), "x_strong": _strong(x_u[iu], gen), "y": y_u[iu]}
    return batch_l, batch_u


def test_fixmatch_overfits_stripes_and_checkpoint_round_trip(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    x_l, y_l = _stripes(8, gen, balanced=True)
    x_u, y_u = _stripes(128, gen)
    y_u[::2] = -1  # half of the unlabeled ground truth is unknown
    x_test, y_test = _stripes(64, gen)
    cfg, steps = _cfg(), 40
    state = _state(cfg, steps)
    history = [train_step(state, *_batches(gen, x_l, y_l, x_u, y_u), cfg, "cpu") for _ in range(30)]
    assert history[0]["lr"] == pytest.approx(0.03)
    assert state.step == 30 and history[-1]["step"] == 30.0
    assert {
        "loss",
        "sup_loss",
        "unsup_loss",
        "mask_rate",
        "lr",
        "pseudo_label_acc",
        "pseudo_label_acc_all",
    } <= set(history[-1])
    assert sum(h["mask_rate"] for h in history[-5:]) / 5 > 0.6
    assert sum(h["pseudo_label_acc_all"] for h in history[-5:]) / 5 > 0.9

    path = tmp_path / "train_state.pt"
    torch.save(state.state_dict(), path)
    restored = _state(cfg, steps, seed=123)  # other initial weights
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.step == 30
    state.model.eval(), restored.model.eval()
    torch.testing.assert_close(restored.model(x_test), state.model(x_test), rtol=0, atol=0)
    torch.testing.assert_close(restored.ema.module(x_test), state.ema.module(x_test), rtol=0, atol=0)
    # Training goes on identically: optimiser momentum, schedule and step counter were restored.
    for _ in range(steps - 30):
        batch_l, batch_u = _batches(gen, x_l, y_l, x_u, y_u)
        assert train_step(restored, batch_l, batch_u, cfg, "cpu") == train_step(
            state, batch_l, batch_u, cfg, "cpu"
        )
    assert restored.step == state.step == steps
    for a, b in zip(restored.model.parameters(), state.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    online = evaluate(state.model, [(x_test[:32], y_test[:32]), {"x": x_test[32:], "y": y_test[32:]}], "cpu")
    ema = evaluate(state.ema.module, [(x_test, y_test)], "cpu")
    assert online["accuracy"] >= 0.95 and ema["accuracy"] >= 0.9, (online, ema)
    assert online["num_samples"] == 64 and len(online["per_class_accuracy"]) == 2

    # The same labels, supervised only: FixMatch's unlabeled loss is what closes the gap.
    sup_cfg = _cfg(lambda_u=0.0)
    sup = _state(sup_cfg, steps)
    for _ in range(steps):
        train_step(sup, *_batches(gen, x_l, y_l, x_u, y_u), sup_cfg, "cpu")
    assert evaluate(sup.model, [(x_test, y_test)], "cpu")["accuracy"] < online["accuracy"]


@pytest.mark.parametrize("mode,dist_align", [("flexmatch", False), ("freematch", True)])
def test_adaptive_thresholds_train_and_serialise(mode: str, dist_align: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = _stripes(32, gen)
    cfg = _cfg(threshold_mode=mode, dist_align=dist_align, p_cutoff=0.95)
    state = _state(cfg, 10)
    for _ in range(3):
        metrics = train_step(state, *_batches(gen, x, y, x, y, 4, 8), cfg, "cpu")
    assert math.isfinite(metrics["loss"])
    sd = state.state_dict()
    assert sd["thresholds"]["kind"] == type(state.thresholds).__name__
    assert (sd["dist_align"] is not None) == dist_align
    other = _state(cfg, 10, seed=5)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.thresholds.thresholds(), state.thresholds.thresholds())
    mismatched = _state(_cfg(threshold_mode="fixed", dist_align=dist_align), 10)
    with pytest.raises(StateError, match="thresholds"):
        mismatched.load_state_dict(sd)


def test_include_models_false_and_missing_keys() -> None:
    cfg = _cfg()
    state = _state(cfg, 10)
    sd = state.state_dict(include_models=False)
    assert "model" not in sd and "ema" not in sd
    other = _state(cfg, 10, seed=3)
    before = [p.clone() for p in other.model.parameters()]
    other.load_state_dict(sd, include_models=False)
    assert all(torch.equal(a, b) for a, b in zip(before, other.model.parameters(), strict=True))
    with pytest.raises(StateError, match="missing"):
        other.load_state_dict(sd)


def test_supervised_only_paths_agree() -> None:
    gen = torch.Generator().manual_seed(2)
    x, y = _stripes(16, gen)
    batch_l, batch_u = _batches(gen, x, y, x, y, 4, 4)
    a, b = _state(_cfg(), 5), _state(_cfg(lambda_u=0.0), 5)
    ma = train_step(a, batch_l, None, _cfg(), "cpu")
    mb = train_step(b, batch_l, batch_u, _cfg(lambda_u=0.0), "cpu")
    assert ma == mb
    assert ma["unsup_loss"] == 0.0 and ma["mask_rate"] == 0.0 and "pseudo_label_acc" not in ma
    assert ma["loss"] == ma["sup_loss"]


def test_non_finite_loss_raises_before_the_update() -> None:
    state = _state(_cfg(), 5)
    before = [p.clone() for p in state.model.parameters()]
    bad = {"x": torch.full((2, 3, SIZE, SIZE), float("nan")), "y": torch.tensor([0, 1])}
    with pytest.raises(HSSALError, match="non-finite"):
        train_step(state, bad, None, _cfg(), "cpu")
    assert state.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


def test_cpu_bf16_autocast_channels_last_and_compile_wrapper() -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = _stripes(16, gen)
    batch_l, batch_u = _batches(gen, x, y, x, y, 4, 4)
    state = _state(_cfg(), 5)
    state.model = prepare_model(state.model, "cpu", channels_last=True)
    m = train_step(state, batch_l, batch_u, _cfg(), "cpu", torch.bfloat16, True, allow_cpu_amp=True)
    assert math.isfinite(m["loss"])
    with pytest.raises(ConfigError, match="bfloat16"):
        train_step(state, batch_l, batch_u, _cfg(), "cpu", torch.float16)


def test_optimizer_groups_and_schedule() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2))

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    net = Net()
    opt = build_optimizer(net, lr=0.1, weight_decay=1e-3)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [net.conv.weight.shape] and decay["weight_decay"] == 1e-3
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # conv bias, bn w/b, pos_embed
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9

    sched = build_scheduler(opt, total_steps=100, schedule="fixmatch")
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.1 * math.cos(7 * math.pi * 50 / (16 * 100)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * math.cos(7 * math.pi / 16))

    warm = build_optimizer(net, lr=0.1)
    sched = build_scheduler(warm, total_steps=20, warmup_steps=10, schedule="fixmatch")
    assert warm.param_groups[0]["lr"] == 0.0
    for _ in range(5):
        warm.step()
        sched.step()
    assert warm.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ConfigError):
        build_scheduler(warm, total_steps=5, warmup_steps=6)
    with pytest.raises(ConfigError, match="Nesterov"):
        build_optimizer(net, momentum=0.0, nesterov=True)


def test_cosine_schedule_ends_each_round_at_zero() -> None:
    """``ssl.lr_schedule=cosine`` (the default) reaches lr 0 at the round's last step; ``fixmatch`` 0.2x."""
    from hssal_ray.config import ExperimentConfig
    from hssal_ray.rounds import build_optimization

    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net, lr=0.1)
    sched = build_scheduler(opt, total_steps=10, schedule="cosine")
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(0.1 * math.cos(math.pi * 5 / 20))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert ExperimentConfig().ssl.lr_schedule == "cosine"
    assert (
        inspect.signature(build_scheduler).parameters["schedule"].default
        == ExperimentConfig().ssl.lr_schedule
    )
    opt2, sched2 = build_optimization(ExperimentConfig(), torch.nn.Linear(3, 2), total_steps=4)
    for _ in range(4):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="unknown lr schedule"):
        build_scheduler(opt, total_steps=10, schedule="step")


def test_evaluate_known_answer() -> None:
    logits = torch.tensor(
        [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]]
    )
    y = torch.tensor([0, 0, 0, 2, -1])  # last one unknown: ignored
    res = evaluate(nn.Identity(), [(logits[:2], y[:2]), {"x": logits[2:], "y": y[2:]}], "cpu")
    assert res["accuracy"] == pytest.approx(0.75) and res["num_samples"] == 4
    assert res["loss"] == pytest.approx(float(F.cross_entropy(logits[:4], y[:4])))
    per_class = res["per_class_accuracy"]
    assert per_class[0] == pytest.approx(2 / 3) and math.isnan(per_class[1]) and per_class[2] == 1.0
    with pytest.raises(DataError):
        evaluate(nn.Identity(), [], "cpu")


def test_predict_normalised_embeddings_and_probs() -> None:
    model = build_model("hssal_small_cnn", num_classes=4)
    model.train()
    emb, probs = predict(model, torch.randn(3, 3, SIZE, SIZE))
    assert emb.shape == (3, 256) and probs.shape == (3, 4)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert model.training  # mode restored
    assert isinstance(FreeMatchThresholds(2).thresholds(), torch.Tensor)


def test_compiled_model_trains_and_saves_plain_keys() -> None:
    from hssal_ray.models import unwrap_model

    model = build_model("hssal_small_cnn", num_classes=2, widths=(8, 16))
    compiled = torch.compile(model, backend="eager")  # eager backend: dynamo tracing, no codegen
    assert unwrap_model(compiled) is model
    optimizer = build_optimizer(compiled)
    state = TrainState.create(compiled, optimizer, build_scheduler(optimizer, 3), _cfg())
    gen = torch.Generator().manual_seed(4)
    x, y = _stripes(8, gen)
    metrics = train_step(state, *_batches(gen, x, y, x, y, 4, 4), _cfg(), "cpu")
    assert math.isfinite(metrics["loss"]) and state.step == 1
    assert not any(k.startswith("_orig_mod.") for k in state.state_dict()["model"])
