"""A small Label Studio REST client on ``urllib.request`` (no extra dependency).

Endpoints used (Label Studio 1.x; ``Authorization: Token <token>``, the legacy API token):

* ``GET  /api/current-user/whoami``: check the URL and the token;
* ``POST /api/projects`` / ``GET /api/projects/{id}``: create or read a project;
* ``POST /api/projects/{id}/import?return_task_ids=true``: import tasks (with ``predictions``);
* ``GET  /api/tasks?project={id}&fields=all&query=...``: tasks with annotations, filtered on data fields.

The token is kept in the request headers only: it is never logged, never part of ``repr`` and never
in an error message. Every error is one line; :attr:`LabelStudioError.transient` tells a caller
whether trying again later may help (no connection, a timeout, HTTP 429 or 5xx) or not (a refused
token, a missing project, a server that is not Label Studio).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from hssal_ray.errors import HSSALError

__all__ = ["LabelStudioClient", "LabelStudioError"]

logger = logging.getLogger(__name__)


_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class LabelStudioError(HSSALError):
    """The Label Studio server could not be reached or refused a request.

    Args:
        message: One line: what failed and what to do.
        status: The HTTP status code, ``None`` when no HTTP answer came back.
        transient: Whether the same request may succeed later (connection refused or reset, a
            timeout, HTTP 408/429/5xx): callers that wait for annotations retry those.
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False) -> None:
        """Store the message, the status code and whether the failure may pass."""
        super().__init__(message)
        self.status = status
        self.transient = transient


def _one_line(text: str, limit: int) -> str:
    """``text`` with its whitespace runs collapsed to one space, cut to ``limit`` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class LabelStudioClient:
    """Calls the Label Studio REST API of one server with one token.

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:8080``.
        token: The API token (Label Studio's legacy token, sent as ``Authorization: Token ...``).
        token_env: Name of the environment variable the token came from (for messages only).
        timeout_s: Timeout of one HTTP request.
    """

    def __init__(self, url: str, token: str, token_env: str = "", timeout_s: float = 60.0) -> None:
        """Store the connection settings (see the class docstring)."""
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        self.token_env = token_env
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        """URL only: the token never appears in logs."""
        return f"LabelStudioClient(url={self.url!r})"

    # ------------------------------------------------------------------ HTTP
    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One JSON request; returns the decoded JSON response (``None`` for an empty body).

        Raises:
            LabelStudioError: Connection failure, HTTP error (with the server's reason), non-JSON reply.
        """
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        full = f"{self.url}{path}{query}"
        data = None
        headers = dict(self._headers)
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(full, data=data, method=method, headers=headers)
        logger.debug("Label Studio %s %s%s", method, self.url, path)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
                kind = resp.headers.get_content_type()
        except urllib.error.HTTPError as e:
            raise self._http_error(method, path, e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}".rstrip(": ")
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({method} {path}: {_one_line(str(reason), 200)}); "
                "is the server running and oracle.url right?",
                transient=True,
            ) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LabelStudioError(
                f"{self.url} answered {method} {path} with HTTP 200 and a {kind} page, not JSON: "
                f"is oracle.url={self.url} a Label Studio server?"
            ) from None

    def _http_error(self, method: str, path: str, e: urllib.error.HTTPError) -> LabelStudioError:
        """One line for an HTTP error: the status, the server's JSON reason if any, what to do."""
        try:
            body = e.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            body = ""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        transient = e.code in _TRANSIENT_HTTP
        if not isinstance(doc, dict):  # an HTML error page: a proxy, another web server, a wrong path
            kind = e.headers.get_content_type() if e.headers is not None else "non-JSON"
            what = (
                "the server is failing or restarting"
                if transient
                else f"is oracle.url={self.url} a Label Studio server?"
            )
            return LabelStudioError(
                f"{self.url} answered {method} {path} with HTTP {e.code} {e.reason} (a {kind} page, not "
                f"Label Studio's JSON API): {what}",
                status=e.code,
                transient=transient,
            )
        head = f"Label Studio at {self.url} refused {method} {path}: HTTP {e.code} {e.reason}"
        detail = _one_line(json.dumps(doc.get("validation_errors") or doc.get("detail") or doc), 300)
        hint = ""
        if e.code in (401, 403):
            env = f"${self.token_env}" if self.token_env else "the token"
            hint = (
                f"; the server rejected the API token from {env}: use the legacy token of "
                "'Account & Settings' (start the server with --enable-legacy-api-token)"
            )
        elif e.code == 404:
            hint = "; does the project exist (oracle.project_id)?"
        return LabelStudioError(f"{head}: {detail}{hint}", status=e.code, transient=transient)

    # ------------------------------------------------------------------ API
    def whoami(self) -> dict[str, Any]:
        """The token's user (checks the URL and the token).

        Raises:
            LabelStudioError: As :meth:`request`, or the answer is not a Label Studio user.
        """
        user = self.request("GET", "/api/current-user/whoami")
        if not isinstance(user, dict) or "id" not in user:
            raise LabelStudioError(
                f"{self.url} answered GET /api/current-user/whoami without a user: "
                f"is oracle.url={self.url} a Label Studio server?"
            )
        return user

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        """Create a project; returns it (``id``, ``label_config``, ...)."""
        body = {"title": title, "label_config": label_config, "description": description}
        return self.request("POST", "/api/projects", body=body)

    def get_project(self, project_id: int) -> dict[str, Any]:
        """One project."""
        return self.request("GET", f"/api/projects/{int(project_id)}")

    def find_project(self, project_id: int) -> dict[str, Any] | None:
        """One project, ``None`` if the server has none with this id (HTTP 404)."""
        try:
            return self.get_project(project_id)
        except LabelStudioError as e:
            if e.status == 404:
                return None
            raise

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import tasks (in order) and return their new ids."""
        out = self.request(
            "POST", f"/api/projects/{int(project_id)}/import", {"return_task_ids": "true"}, list(tasks)
        )
        ids = out.get("task_ids") if isinstance(out, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            count = out.get("task_count") if isinstance(out, dict) else "?"
            raise LabelStudioError(
                f"Label Studio at {self.url} imported {count} of {len(tasks)} tasks into project "
                f"{project_id} without returning their ids"
            )
        return [int(i) for i in ids]

    def tasks(
        self,
        project_id: int,
        data_equal: Mapping[str, str],
        page_size: int = 100,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The tasks of a project whose ``data`` fields equal ``data_equal``, with annotations.

        Args:
            project_id: The project.
            data_equal: ``field -> value`` the tasks' ``data`` must hold.
            page_size: Tasks per request.
            limit: Stop after this many tasks (``None``: every one).
        """
        if limit is not None:
            page_size = min(page_size, max(limit, 1))
        items = [
            {"filter": f"filter:tasks:data.{k}", "operator": "equal", "type": "String", "value": v}
            for k, v in data_equal.items()
        ]
        query = json.dumps({"filters": {"conjunction": "and", "items": items}})
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {
                "project": int(project_id),
                "fields": "all",
                "page": page,
                "page_size": page_size,
                "query": query,
            }
            doc = self.request("GET", "/api/tasks", params)
            tasks = doc.get("tasks") if isinstance(doc, dict) else None
            if not isinstance(tasks, list):
                raise LabelStudioError(f"Label Studio at {self.url}: unexpected task list from /api/tasks")
            out.extend(t for t in tasks if isinstance(t, dict))
            total = int(doc.get("total", len(out)))
            if not tasks or len(out) >= total or (limit is not None and len(out) >= limit):
                break
            page += 1
        # the filter runs in the server; check it here too (an old server may ignore it)
        return [
            t
            for t in out
            if isinstance(t.get("data"), dict)
            and all(str(t["data"].get(k)) == v for k, v in data_equal.items())
        ]
