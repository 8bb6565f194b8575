"""Shared pytest fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests._env import use_token_auth

use_token_auth()  # Ray token auth on, one token for the session (before any Ray import)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass
