"""A small Label Studio REST client on ``urllib.request`` (no extra dependency).

Endpoints used (Label Studio 1.x; ``Authorization: Token <token>``, the legacy API token):

* ``GET  /api/current-user/whoami``: check the URL and the token;
* ``POST /api/projects`` / ``GET /api/projects/{id}``: create or read a project;
* ``POST /api/projects/{id}/import?return_task_ids=true``: import tasks (with ``predictions``);
* ``GET  /api/tasks?project={id}&fields=all&query=...``: tasks with annotations, filtered on data fields.

The token is kept in the request headers only: it is never logged, never part of ``repr`` and never
in an error message.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from hssal_ray.errors import HSSALError

__all__ = ["LabelStudioClient", "LabelStudioError"]

logger = logging.getLogger(__name__)


class LabelStudioError(HSSALError):
    """The Label Studio server could not be reached or refused a request."""


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
        except urllib.error.HTTPError as e:
            raise LabelStudioError(self._http_message(method, path, e)) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} ({method} {path}: {reason}); "
                "is the server running and oracle.url right?"
            ) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {method} {path} with something that is not JSON "
                f"({raw[:80]!r}); is oracle.url the Label Studio server?"
            ) from None

    def _http_message(self, method: str, path: str, e: urllib.error.HTTPError) -> str:
        try:
            body = e.read().decode("utf-8", "replace")
        except OSError:
            body = ""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            detail = json.dumps(doc.get("validation_errors") or doc.get("detail") or doc)[:500]
        else:
            detail = body[:300]
        hint = ""
        if e.code in (401, 403):
            env = f"${self.token_env}" if self.token_env else "the token"
            hint = (
                f"; the server rejected the API token from {env}: use the legacy token of "
                "'Account & Settings' (start the server with --enable-legacy-api-token)"
            )
        elif e.code == 404:
            hint = "; does the project exist (oracle.project_id)?"
        return f"Label Studio at {self.url} refused {method} {path}: HTTP {e.code} {e.reason}: {detail}{hint}"

    # ------------------------------------------------------------------ API
    def whoami(self) -> dict[str, Any]:
        """The token's user (checks the URL and the token)."""
        return self.request("GET", "/api/current-user/whoami")

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        """Create a project; returns it (``id``, ``label_config``, ...)."""
        body = {"title": title, "label_config": label_config, "description": description}
        return self.request("POST", "/api/projects", body=body)

    def get_project(self, project_id: int) -> dict[str, Any]:
        """One project."""
        return self.request("GET", f"/api/projects/{int(project_id)}")

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
        self, project_id: int, data_equal: Mapping[str, str], page_size: int = 100
    ) -> list[dict[str, Any]]:
        """Every task of a project whose ``data`` fields equal ``data_equal``, with annotations."""
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
            if not tasks or len(out) >= total:
                break
            page += 1
        # the filter runs in the server; check it here too (an old server may ignore it)
        return [
            t
            for t in out
            if isinstance(t.get("data"), dict)
            and all(str(t["data"].get(k)) == v for k, v in data_equal.items())
        ]
