"""A stand-in for the few Label Studio REST endpoints the oracle calls, on the stdlib's HTTP server.

For unit tests of what happens on the wire without starting the real server (which
``tests/integration/test_label_studio.py`` does): failures that may pass (``fail_next``: HTTP 503
pages, dropped connections; :meth:`FakeLabelStudio.stop` / :meth:`FakeLabelStudio.restart`: a
server restarting on the same port), HTML error pages, refused tokens. Endpoints, with Label
Studio's shapes: ``GET /api/current-user/whoami``, ``POST /api/projects``, ``GET
/api/projects/{id}``, ``POST /api/projects/{id}/import?return_task_ids=true``, ``GET /api/tasks``
(``project``, ``query`` with ``filter:tasks:data.X equal`` items, ``page``, ``page_size``) and
``POST /api/tasks/{id}/annotations``.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeLabelStudio"]


class FakeLabelStudio:
    """An in-memory Label Studio on 127.0.0.1 (a free port), stopped by :meth:`stop`.

    Args:
        token: The API token it accepts (``Authorization: Token ...``).
    """

    def __init__(self, token: str = "fake-token") -> None:
        self.token = token
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.requests: list[str] = []  # "METHOD /path" of every request, failed ones too
        # what the next requests meet: "503" (an HTML error page), "drop" (the connection closed, the
        # request not done) or "lost" (done, the answer lost); "MODE@/import": the next request whose
        # path holds "/import"
        self.fail_next: list[str] = []
        self.html_everywhere = False  # answer everything with a 404 HTML page (a wrong URL)
        self._next_id = 1
        self._lock = threading.Lock()
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`)."""
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening (connections are refused until :meth:`start`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def annotate(self, task_id: int, label: str) -> None:
        """A person's answer to one task."""
        result = [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
        ]
        self.tasks[task_id]["annotations"].append(
            {"id": self.new_id(), "result": result, "was_cancelled": False}
        )


def _handler(fake: FakeLabelStudio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any, kind: str = "application/json") -> None:
            if self.lost:
                return
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _route(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.requests.append(f"{method} {url.path}")
            self.lost = False
            due = [m for m in fake.fail_next if "@" not in m or m.split("@", 1)[1] in url.path]
            if due:
                fake.fail_next.remove(due[0])
                mode = due[0].split("@", 1)[0]
                if mode == "drop":  # no answer at all: the client sees the connection closed
                    self.close_connection = True
                    return
                if mode == "lost":  # done, but the answer is lost: the client sees the connection closed
                    self.close_connection = self.lost = True
                else:
                    page = "<html><body>" + "<p>Bad gateway, try later</p>" * 20 + "</body></html>"
                    return self._send(int(mode), page, "text/html")
            if fake.html_everywhere:
                page = "<!DOCTYPE html><html><head><title>Not Found</title></head><body>" + "x" * 400
                return self._send(404, page + "</body></html>", "text/html")
            if self.headers.get("Authorization") != f"Token {fake.token}":
                return self._send(401, {"detail": "Invalid token."})
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            params = dict(urllib.parse.parse_qsl(url.query))
            parts = url.path.strip("/").split("/")
            if parts == ["api", "current-user", "whoami"]:
                return self._send(200, {"id": 1, "email": "annotator@example.com"})
            if parts == ["api", "projects"] and method == "POST":
                pid = fake.new_id()
                fake.projects[pid] = {"id": pid, **body}
                return self._send(201, fake.projects[pid])
            if parts[:2] == ["api", "projects"] and len(parts) == 3:
                project = fake.projects.get(int(parts[2]))
                return self._send(200, project) if project else self._send(404, {"detail": "Not found."})
            if parts[:2] == ["api", "projects"] and parts[3:] == ["import"]:
                pid, ids = int(parts[2]), []
                for task in body:
                    tid = fake.new_id()
                    fake.tasks[tid] = {
                        "id": tid,
                        "project": pid,
                        "annotations": [],
                        "predictions": [],
                        **task,
                    }
                    ids.append(tid)
                return self._send(201, {"task_count": len(ids), "task_ids": ids})
            if parts == ["api", "tasks"]:
                items = json.loads(params.get("query", "{}")).get("filters", {}).get("items", [])
                want = {i["filter"].removeprefix("filter:tasks:data."): i["value"] for i in items}
                hits = [
                    t
                    for t in sorted(fake.tasks.values(), key=lambda t: t["id"])
                    if t["project"] == int(params["project"])
                    and all(str(t["data"].get(k)) == v for k, v in want.items())
                ]
                page, size = int(params.get("page", 1)), int(params.get("page_size", 100))
                return self._send(200, {"tasks": hits[(page - 1) * size : page * size], "total": len(hits)})
            if parts[:2] == ["api", "tasks"] and parts[3:] == ["annotations"]:
                fake.annotate(int(parts[2]), body["result"][0]["value"]["choices"][0])
                return self._send(201, {})
            return self._send(404, {"detail": "Not found."})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler
