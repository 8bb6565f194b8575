"""A real Label Studio server for tests, from PyPI, in its own cached virtualenv.

Label Studio is a Django application with its own pins, so it is kept out of the project's lock:
``label-studio==1.23.2`` is installed once into ``~/.cache/hssal_ray/label-studio-1.23.2/`` (override
with ``HSSAL_LABEL_STUDIO_VENV``) and reused. The server runs on a free port of 127.0.0.1 with a
temporary data directory, one user and a generated legacy API token, and is stopped at teardown;
:func:`restart` stops it and starts it again on the same port with the same data.

By hand (what the fixture does)::

    python3 -m venv ~/.cache/hssal_ray/label-studio-1.23.2
    ~/.cache/hssal_ray/label-studio-1.23.2/bin/pip install label-studio==1.23.2 "sentry-sdk>=2.16,<3"
    LABEL_STUDIO_BASE_DATA_DIR=/tmp/ls LATEST_VERSION_CHECK=false \\
        ~/.cache/hssal_ray/label-studio-1.23.2/bin/label-studio start --no-browser \\
        --internal-host 127.0.0.1 -p 8080 --username me@example.com --password ... \\
        --user-token "$LABEL_STUDIO_API_KEY" --enable-legacy-api-token
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "1.23.2"
# Label Studio 1.23.2 asks for sentry-sdk>=2.16 with no upper bound, and sentry-sdk 3.0 dropped the
# `send_default_pii` option its settings pass: `manage.py migrate` fails with "Unknown option" (seen
# 2026-12-07 on a fresh install). Installed together with the server; a change reinstalls the venv.
REQUIREMENTS = (f"label-studio=={VERSION}", "sentry-sdk>=2.16,<3")
START_TIMEOUT_S = 240.0


def venv_dir() -> Path:
    """Where the Label Studio virtualenv lives (created on first use)."""
    default = Path.home() / ".cache" / "hssal_ray" / f"label-studio-{VERSION}"
    return Path(os.environ.get("HSSAL_LABEL_STUDIO_VENV", default))


def ensure_installed() -> tuple[Path | None, str]:
    """The ``label-studio`` executable, installing it if needed; ``(None, reason)`` if impossible."""
    venv = venv_dir()
    exe = venv / "bin" / "label-studio"
    marker = venv / ".installed"
    if exe.exists() and marker.exists() and marker.read_text().split() == list(REQUIREMENTS):
        return exe, ""
    if venv.exists():
        shutil.rmtree(venv)  # a half-finished install
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300
        )
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (subprocess.SubprocessError, OSError) as e:
        return None, f"cannot create the Label Studio virtualenv in {venv}: {e}"
    if proc.returncode != 0 or not exe.exists():
        tail = (proc.stderr or proc.stdout)[-600:]
        return None, f"`pip install label-studio=={VERSION}` failed (no network to PyPI?): {tail}"
    marker.write_text("\n".join(REQUIREMENTS) + "\n")
    return exe, ""


def template_db(exe: Path) -> Path:
    """A migrated, empty Label Studio database, made once next to the virtualenv.

    Django's migrations take ~1-2 min on a busy 2-core machine; copying their result makes a
    server start in ~20-30 s. The copy holds no user: ``start`` creates one with a fresh token.
    """
    venv = exe.parent.parent
    db = venv / "template" / "label_studio.sqlite3"
    if db.exists():
        return db
    (manage,) = venv.glob("lib/python3*/site-packages/label_studio/manage.py")
    work = venv / "template.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(work), LATEST_VERSION_CHECK="false")
    env.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
    proc = subprocess.run(
        [str(venv / "bin" / "python"), str(manage), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"Label Studio migrations failed: {(proc.stderr or proc.stdout)[-800:]}")
    db.parent.mkdir(exist_ok=True)
    shutil.copyfile(work / "label_studio.sqlite3", db.with_suffix(".tmp"))
    os.replace(db.with_suffix(".tmp"), db)
    shutil.rmtree(work, ignore_errors=True)
    return db


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running Label Studio."""

    url: str
    token: str
    username: str
    password: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    start_s: float
    exe: Path

    def api(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        """One REST call as the test user (``Authorization: Token``)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = resp.read()
        if raw:
            return payload
        return json.loads(payload) if payload.strip() else None

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait for it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def start(exe: Path, data_dir: Path) -> Server:
    """Start Label Studio on a free loopback port and wait until ``/health`` answers."""
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_db(exe), data_dir / "data" / "label_studio.sqlite3")
    server = Server(
        f"http://127.0.0.1:{free_port()}",
        secrets.token_hex(20),
        "annotator@example.com",
        secrets.token_urlsafe(12),
        None,  # type: ignore[arg-type] - set by _launch
        data_dir,
        0.0,
        exe,
    )
    _launch(server)
    return server


def restart(server: Server) -> None:
    """Stop the server and start it again on the same port with the same data (a server restart)."""
    server.stop()
    _launch(server)


def _launch(server: Server) -> None:
    env = dict(os.environ)
    data_dir = server.data_dir
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir / "data"),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - closed with the process
    t0 = time.monotonic()
    port = server.url.rsplit(":", 1)[1]
    server.proc = subprocess.Popen(
        [
            str(server.exe),
            "start",
            "--no-browser",
            "--internal-host=127.0.0.1",
            f"--port={port}",
            f"--username={server.username}",
            f"--password={server.password}",  # '=': a generated value may start with '-'
            f"--user-token={server.token}",
            "--enable-legacy-api-token",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = t0 + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"Label Studio exited ({server.proc.returncode}); see {data_dir / 'server.log'}"
            )
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    server.api("GET", "/api/current-user/whoami")  # the token works too
                    server.start_s = time.monotonic() - t0
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"Label Studio did not answer within {START_TIMEOUT_S:.0f} s; see {data_dir}/server.log"
    )
