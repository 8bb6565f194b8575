"""The training math's defaults live in ``hssal_ray.config.SSLConfig``; the functions agree with it."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from hssal_ray.config import SSLConfig
from hssal_ray.ssl import steps
from hssal_ray.ssl.optim import build_optimizer, build_scheduler

CONFIG = SSLConfig()


def _defaults(fn: object) -> dict[str, object]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize(
    "name",
    ["p_cutoff", "lambda_u", "T", "ema_m", "ema_warmup", "ema_warmup_power", "threshold_mode", "dist_align"],
)
def test_a_cfg_without_the_attribute_takes_the_config_default(name: str) -> None:
    assert steps._cfg(SimpleNamespace(), name) == getattr(CONFIG, name)
    assert steps._cfg(SimpleNamespace(**{name: "set"}), name) == "set"


def test_optimiser_defaults_equal_the_config_defaults() -> None:
    got = _defaults(build_optimizer)
    assert got == {k: getattr(CONFIG, k) for k in ("lr", "momentum", "weight_decay", "nesterov")}


def test_schedule_warmup_default_equals_the_config_default() -> None:
    # the schedule's name has no config-equal default: build_optimization always passes ssl.lr_schedule
    assert _defaults(build_scheduler)["warmup_steps"] == CONFIG.warmup_steps


def test_head_defaults_equal_the_config_defaults() -> None:
    from hssal_ray.models import build_model, make_head

    assert _defaults(make_head) == {"kind": CONFIG.head, "hidden": CONFIG.head_hidden}
    got = _defaults(build_model)
    assert (got["head"], got["head_hidden"]) == (CONFIG.head, CONFIG.head_hidden)
