"""The scripted model server in a process of its own, as the gateway benchmark's upstream.

``python -m bench.gateway_upstream PORT [--nagle]``. Its own process, so its 200 handler
threads do not share a GIL with the client that times them.

The model server sends with ``TCP_NODELAY`` (and a listen backlog of 1024). ``--nagle``
turns Nagle's algorithm back on, to show its effect: the server writes its response
headers and then the first SSE frame as two small sends, so on a pooled (keep-alive)
connection, whose receiver delays its ACKs, the frame waits ~40 ms for the ACK of the
headers. A fresh connection (the direct baseline) ACKs at once and never sees it, so
proxies, which reuse upstream connections, would pay 40 ms the real API does not charge.
"""

from __future__ import annotations

import sys

from model_server import server


def main(argv: list[str]) -> None:
    if "--nagle" in argv:
        server._Handler.disable_nagle_algorithm = False
    server.serve("127.0.0.1", int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
