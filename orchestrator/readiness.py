"""What `/readyz` checks: every dependency a run needs, each named when it fails.

The API never talks to Docker: each worker host's heartbeat (``runtime.heartbeat``)
publishes a :class:`HostStatus` here under a key that expires, and the API reads them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis
import sqlalchemy.exc
from sqlalchemy import Engine

from orchestrator.db import engine as db

KEY_PREFIX = "ccq:heartbeat:"
# A host whose worker stopped beating drops out this long after its last heartbeat.
TTL_SECONDS = 20


@dataclass(frozen=True)
class HostStatus:
    hostname: str
    docker_error: str | None
    image_error: str | None
    checked_at: float
    # Session containers cannot call the gateway (no model calls, no tools).
    network_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.docker_error is None and self.image_error is None and not self.network_error


def publish(client: redis.Redis, status: HostStatus) -> None:
    client.set(KEY_PREFIX + status.hostname, json.dumps(asdict(status)), ex=TTL_SECONDS)


def live_hosts(client: redis.Redis) -> list[HostStatus]:
    """Every worker host whose heartbeat has not expired."""
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=100))
    values = client.mget(keys) if keys else []
    return [HostStatus(**json.loads(v)) for v in values if v is not None]


def find_problems(engine: Engine, redis_client: redis.Redis) -> dict[str, str]:
    """Return ``{component: problem}`` for everything not ready; empty when all is well.

    Components: ``postgres``, ``redis``, ``docker``, ``worker_image`` and
    ``session_network`` (the last three as reported by worker heartbeats, since the API
    never talks to Docker itself; ``session_network`` means session containers cannot
    call the gateway, so no run could reach the model).
    """
    problems: dict[str, str] = {}
    try:
        db.ping(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        problems["postgres"] = f"unreachable: {type(cause).__name__}"
    try:
        redis_client.ping()
        hosts = live_hosts(redis_client)
    except redis.RedisError as exc:
        problems["redis"] = f"unreachable: {exc}"
        return problems
    if not hosts:
        problems["docker"] = "no worker has reported its Docker engine (is a worker running?)"
    elif not any(h.healthy for h in hosts):
        first = hosts[0]
        if first.docker_error:
            problems["docker"] = f"{first.hostname}: {first.docker_error}"
        if first.image_error:
            problems["worker_image"] = f"{first.hostname}: {first.image_error}"
        if first.network_error:
            problems["session_network"] = f"{first.hostname}: {first.network_error}"
    return problems
