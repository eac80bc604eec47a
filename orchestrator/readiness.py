"""What `/readyz` checks: every dependency a run needs, each named when it fails."""

from __future__ import annotations

import redis
import sqlalchemy.exc
from sqlalchemy import Engine

from orchestrator.db import engine as db
from orchestrator.runtime import heartbeat


def find_problems(engine: Engine, redis_client: redis.Redis) -> dict[str, str]:
    """Return ``{component: problem}`` for everything not ready; empty when all is well.

    Components: ``postgres``, ``redis``, ``docker``, ``worker_image`` and
    ``session_network`` (the last three as reported by worker heartbeats, since the API
    never talks to Docker itself; ``session_network`` means session containers cannot
    call the API, so their tools would fail).
    """
    problems: dict[str, str] = {}
    try:
        db.ping(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        problems["postgres"] = f"unreachable: {type(cause).__name__}"
    try:
        redis_client.ping()
        hosts = heartbeat.live_hosts(redis_client)
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
