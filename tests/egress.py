"""A web server on this host standing in for a package registry, for the egress proxy.

The gateway's proxy would refuse it (it listens on loopback): the test stack pins its
name to 127.0.0.1 in ``CCQ_EGRESS_HOSTS``, as an operator pins an internal mirror, and
adds its port to ``CCQ_EGRESS_PORTS``. Nothing outside this machine is ever contacted.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# On the stack's CCQ_EGRESS_ALLOW ceiling; sessions list what they use.
ORIGIN_NAME = "pkgs.egress.test"
# Under the ceiling too, but on no session's list in the tests.
UNLISTED_NAME = "other.egress.test"
EGRESS_CEILING = ("*.egress.test", "localhost")
ORIGIN_BODY = "ccq egress origin says hello"


class Origin:
    """A threaded HTTP server on 127.0.0.1 that answers every GET with ORIGIN_BODY and
    remembers the paths it was asked for."""

    def __init__(self) -> None:
        paths: list[str] = []
        self.paths = paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                body = ORIGIN_BODY.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
