"""Ctrl-C while Ray Train runs a round (``hssal_ray.ssl.trainer``), without a Ray runtime.

Ray Train's ``fit()`` replaces the driver's SIGINT handler with its own and never restores it, so
every later Ctrl-C of a multi-worker run was lost. The end-to-end check (a 2-worker smoke run
interrupted after its first ``fit()``, exit 130) is ``tests/integration/test_lease_runs.py``.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from hssal_ray.ssl.trainer import _abort_then_interrupt, _interruptible, _sigint_restored


@pytest.fixture(autouse=True)
def _keep_sigint():
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_ray_trains_hook_is_still_there():
    """``_interruptible`` overrides a private method of Ray Train: a Ray that renames it must fail here."""
    from ray.train.torch import TorchTrainer

    assert callable(getattr(TorchTrainer, "_register_sigint_handler", None))


def test_handler_aborts_then_raises_keyboard_interrupt_and_a_second_ctrl_c_is_python_s():
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _abort_then_interrupt(lambda: calls.append("abort"), signal.SIGINT, None)
    assert calls == ["abort"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_failing_abort_still_interrupts():
    def gone() -> None:
        raise RuntimeError("the controller actor died")

    with pytest.raises(KeyboardInterrupt):
        _abort_then_interrupt(gone, signal.SIGINT, None)


def test_interruptible_installs_its_handler_in_place_of_the_trainers():
    registered: list[Any] = []

    class Trainer:
        def _register_sigint_handler(self, controller: Any) -> None:
            registered.append(controller)  # Ray's own: never reached

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, not a background job
    cls = _interruptible(Trainer)
    assert cls.__name__ == "InterruptibleTrainer" and issubclass(cls, Trainer)
    cls()._register_sigint_handler(object())
    assert registered == []
    handler = signal.getsignal(signal.SIGINT)
    assert handler is not signal.default_int_handler and callable(handler)


def test_a_background_job_s_ignored_sigint_stays_ignored():
    """``cmd &`` starts the driver with SIGINT ignored: the terminal's Ctrl-C is not for it, in fit() too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _interruptible(object)()._register_sigint_handler(object())
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigint_restored_puts_the_handler_back():
    def mine(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGINT, mine)
    with _sigint_restored():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what fit() does with its own
    assert signal.getsignal(signal.SIGINT) is mine
    with pytest.raises(ValueError), _sigint_restored():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise ValueError  # an error inside fit(): restored too
    assert signal.getsignal(signal.SIGINT) is mine
