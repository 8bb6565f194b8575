"""``hssal_ray._ray`` without a Ray runtime: token auth set-up, auth errors as one line, signals kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hssal_ray import _ray
from hssal_ray.errors import HSSALError


@pytest.fixture
def clean_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token anywhere: no RAY_AUTH_* variables and an empty home directory."""
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()  # an earlier test of the session may have loaded one
    yield tmp_path
    AuthenticationTokenLoader.instance().reset_cache()


def test_private_runtime_uses_token_auth_with_a_fresh_token_written_nowhere(
    clean_auth: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # does not switch a private runtime's auth off
    _ray._use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    token = os.environ["RAY_AUTH_TOKEN"]
    assert len(token) == 64 and int(token, 16) >= 0
    assert list(clean_auth.iterdir()) == []  # no ~/.ray/auth_token written

    # a token the user configured is kept
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (clean_auth / "tok").write_text("f" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_auth / "tok"))
    _ray._use_token_auth()
    assert "RAY_AUTH_TOKEN" not in os.environ


def test_unreadable_token_path_is_one_line(clean_auth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_auth / "missing"))
    with pytest.raises(_ray.RayAuthError, match=r"RAY_AUTH_TOKEN_PATH=.*missing cannot be read"):
        _ray._use_token_auth()


def _refused() -> BaseException:
    """What ``ray.init(address=...)`` raises when the cluster refuses the token (Ray 2.60, measured)."""
    last = (
        "Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
        "  ...\nray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token "
        "is missing or incorrect. Ensure that the token for the cluster is available ..."
    )
    try:
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379") from RuntimeError(last)
    except ConnectionError as e:
        return e


@pytest.mark.parametrize(
    ("mode", "exc", "says"),
    [
        ("token", "refused", "refused this driver (RAY_AUTH_MODE=token, a token that is not the cluster's)"),
        ("disabled", "refused", "refused this driver (RAY_AUTH_MODE=disabled, no token)"),
        ("token", "no token", "no Ray auth token is set for the cluster at 10.0.0.5:6379"),
    ],
)
def test_auth_failures_joining_a_cluster_are_one_line_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, mode: str, exc: str, says: str
) -> None:
    from ray.exceptions import AuthenticationError

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    e = (
        _refused()
        if exc == "refused"
        else AuthenticationError("Token authentication is enabled but no authentication token was found")
    )
    err = _ray._auth_error(e, "10.0.0.5:6379")
    assert isinstance(err, HSSALError)
    msg = str(err)
    assert says in msg and "\n" not in msg
    assert "RAY_AUTH_TOKEN" in msg and "ray get-auth-token" in msg


def test_other_connection_errors_are_left_alone() -> None:
    assert _ray._auth_error(ConnectionError("Failed to connect to Ray cluster at x:1"), "x:1") is None


def test_signal_handlers_set_before_ray_init_are_put_back() -> None:
    def mine(signum: int, frame: object) -> None: ...

    def rays(signum: int, frame: object) -> None: ...

    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, mine)
        with _ray._signals_kept():
            signal.signal(signal.SIGTERM, rays)  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is mine
        # a default action becomes an exit that unwinds (and shuts Ray down at exit)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with _ray._signals_kept():
            signal.signal(signal.SIGTERM, rays)
        assert signal.getsignal(signal.SIGTERM) is _ray._exit_on_signal
        with pytest.raises(SystemExit) as e:
            _ray._exit_on_signal(signal.SIGTERM, None)
        assert e.value.code == 143
    finally:
        signal.signal(signal.SIGTERM, old)
