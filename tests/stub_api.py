"""A stand-in for ccq's API that records what it is sent: for testing what calls it.

Answers from a table keyed by (method, path); anything else is a 404 in the API's error
shape (``{"error": {"code", "message"}}``). Serves from a thread, so tests (sync or async)
can run the code under test against it and read ``requests`` afterwards.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    authorization: str | None
    body: Any
    query: str = ""


class StubApi:
    """The stub on ``host`` (an ephemeral port); ``close()`` it when done."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[ApiRequest] = []
        self.answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = ApiRequest(
                    self.command,
                    path,
                    self.headers.get("Authorization"),
                    json.loads(raw) if raw else None,
                    query,
                )
                with stub._lock:
                    stub.requests.append(request)
                    status, body = stub.answers.get(
                        (self.command, path),
                        (404, {"error": {"code": "not_found", "message": "no such thing"}}),
                    )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The stub's base URL as this machine reaches it."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
