"""The worker's heartbeat thread: it probes this host (Docker, the worker image, the path
from a session container to the API) and publishes the outcome for ``/readyz``.

Listed in the app's ``include``, so a worker imports it at start and the API never does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from orchestrator import readiness
from orchestrator.runtime import heartbeat
from orchestrator.runtime.egress import session_network_policy
from orchestrator.runtime.redis_client import worker_redis
from orchestrator.settings import Settings
from tasks.celery_app import settings_of


def _heartbeat_loop(settings: Settings, stop: threading.Event) -> None:
    client = worker_redis(settings.redis_url)
    hostname = socket.gethostname()
    reach = heartbeat.ReachCheck(
        image=settings.worker_image,
        network=settings.session_network_name,
        instance=settings.instance,
        url=settings.gateway_url_for_containers,
        recheck=heartbeat.REACH_RECHECK_SECONDS,
        policy=session_network_policy(settings),
    )
    while not stop.is_set():
        status = heartbeat.probe_host(hostname, settings.worker_image, reach)
        # Redis down: the heartbeat expires and /readyz says so.
        with contextlib.suppress(redis.RedisError):
            readiness.publish(client, status)
        stop.wait(heartbeat.INTERVAL_SECONDS)


_heartbeat_stop = threading.Event()


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    settings = settings_of(sender.app)
    threading.Thread(
        target=_heartbeat_loop, args=(settings, _heartbeat_stop), name="ccq-heartbeat", daemon=True
    ).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat_stop.set()
