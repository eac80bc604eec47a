"""The scripted model server in a process of its own, as the gateway benchmark's upstream.

``python -m bench.gateway_upstream PORT [--nagle]``. Its own process, so its 200 handler
threads do not share a GIL with the client that times them. Two socket settings of
http.server are changed here, for this benchmark only:

* the listen backlog, 5: 200 streams connecting at once would overflow it and wait out
  SYN retransmits (a second each), in the baseline as in the proxies' first connections;
* Nagle's algorithm, on by default: the server writes its response headers and then the
  first SSE frame as two small sends, so on a pooled (keep-alive) connection, whose
  receiver delays its ACKs, the frame waits ~40 ms for the ACK of the headers. A fresh
  connection (the direct baseline) ACKs at once and never sees it, so proxies, which
  reuse upstream connections, would pay 40 ms the real API (TLS, one write) does not
  charge. ``--nagle`` keeps the default to show that effect.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from model_server import server


class _NoDelayServer(server._HTTPServer):
    request_queue_size = 1024

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


def main(argv: list[str]) -> None:
    server._HTTPServer.request_queue_size = 1024
    if "--nagle" not in argv:
        # ModelServer.start builds `_HTTPServer` for an IPv4 address: swap in the subclass.
        server._HTTPServer = _NoDelayServer  # type: ignore[misc]
    server.serve("127.0.0.1", int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
