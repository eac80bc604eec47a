"""A webhook receiver for tests: answers POSTs from a script, records what it got.

Receivers listen on one port for the whole test run, :data:`WEBHOOK_PORT`, which the
test stack's outbound policy allows (``CCQ_OUTBOUND_PORTS``, with
``CCQ_OUTBOUND_ALLOW_PRIVATE`` for loopback): any other loopback port stays refused, as
the policy tests check. One receiver at a time (tests close theirs).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.waiting import free_port

SECRET = "SECRET-WEBHOOK-TOKEN"
# The operator-allowed webhook port of this test run (tests/conftest.py's settings).
WEBHOOK_PORT = free_port()


@dataclass
class Received:
    path: str
    status: int
    body: dict[str, Any]
    user_agent: str | None


class ScriptedReceiver:
    """Answers POSTs with the statuses of ``script`` in turn, then ``then`` forever."""

    def __init__(self, port: int = WEBHOOK_PORT) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.then = 200
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with receiver._lock:
                    status, headers = (
                        receiver.script.pop(0) if receiver.script else (receiver.then, {})
                    )
                    receiver.received.append(
                        Received(self.path, status, body, self.headers.get("User-Agent"))
                    )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def hook(self, name: str) -> str:
        return f"{self.url}/hooks/{name}/{SECRET}"

    def seen(self, name: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == f"/hooks/{name}/{SECRET}"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
