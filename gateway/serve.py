"""``ccq gateway``: the gateway under uvicorn, on every address of CCQ_GATEWAY_HOST.

Like the API, the gateway listens on loopback and on the session network's host address
(where containers reach it), and nowhere else; uvicorn takes the bound sockets. The
egress proxy listens on the same addresses at CCQ_GATEWAY_PROXY_PORT, started by the
app's lifespan in the same loop.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from gateway.app import create_app
from orchestrator.settings import Settings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sockets = [bind(host, settings.gateway_port) for host in settings.gateway_hosts]
    egress_sockets = [bind(host, settings.gateway_proxy_port) for host in settings.gateway_hosts]
    config = uvicorn.Config(
        create_app(settings, egress_sockets),
        log_level=settings.log_level.lower(),
        access_log=False,  # sessions' calls are counted in /metrics; tokens stay out of logs
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=sockets)
