"""gunicorn's options for the API, from the settings.

Apart from ``api.serve`` so they can be read without gevent patching the process (tests).
"""

from __future__ import annotations

from typing import Any

from orchestrator.settings import Settings

# Query strings can carry `access_token` (browser WebSockets): the access log leaves them out.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'


def gunicorn_options(settings: Settings, *, workers: int, connections: int) -> dict[str, Any]:
    return {
        "bind": [f"{host}:{settings.api_port}" for host in settings.api_hosts],
        "workers": workers,
        "worker_class": "gevent",
        "worker_connections": connections,
        # A gevent worker notifies the arbiter from its own loop; long tails are fine.
        "timeout": 60,
        "graceful_timeout": 10,
        # Idle keep-alive connections stay open this long, so a client polling every few
        # seconds keeps its connection instead of racing the server's close (a reset).
        "keepalive": settings.api_keepalive,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "loglevel": settings.log_level.lower(),
        # gunicorn's control socket has one default path per user: several API processes
        # on one machine (a dev stack beside tests) would fight over it.
        "control_socket_disable": True,
    }
