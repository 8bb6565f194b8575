"""Environment for the subprocesses the tests start: local Ray, no hub, the repo on the path."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """``os.environ`` plus the settings every subprocess of the test suite needs."""
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    env.pop("RAY_ADDRESS", None)
    return env
