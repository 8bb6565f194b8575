"""Environment for the subprocesses the tests start: local Ray, no hub, the repo on the path."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def use_token_auth() -> None:
    """Ray token auth for this test session, as a user has it (``tests/conftest.py`` calls this).

    ``RAY_AUTH_MODE=token`` unless set, and, unless ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``
    is set, a random token for the session in ``RAY_AUTH_TOKEN``: every head, worker node and
    client the tests start (in this process or in subprocesses, which inherit it) shares it, a
    fresh machine needs no ``~/.ray/auth_token``, and nothing is written to the home directory.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def cli_env() -> dict[str, str]:
    """``os.environ`` plus the settings every subprocess of the test suite needs."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.update(
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    env.pop("RAY_ADDRESS", None)
    return env
