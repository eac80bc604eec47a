"""The per-process resources the views use, bound to the app by the factory, and each
request's unit of work."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app, g
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import engine as db
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.isolation import IsolationPolicy
from orchestrator.secrets import SecretStore
from orchestrator.settings import Settings
from tasks.enqueue import Enqueuer

EXTENSION_KEY = "ccq"
# How long one XREAD of a tail blocks before the tail checks on its client.
TAIL_BLOCK_SECONDS = 5.0
# Per pool. Greenlets make many concurrent requests and tails cheap; redis-py's default
# of 100 would turn the 101st into an error.
MAX_REDIS_CONNECTIONS = 10_000


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: Redis
    # Tails block in XREAD for seconds at a time: their own pool, with a longer timeout.
    stream_redis: Redis
    enqueue: Enqueuer
    # What sessions may ask for: egress names, secrets by name, container limits.
    isolation: IsolationPolicy

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = db.make_engine(settings, pool_timeout=settings.api_db_pool_timeout)
        return cls(
            settings=settings,
            engine=engine,
            session_factory=db.make_session_factory(engine),
            # Short timeouts: a Redis outage must turn into a 503, not a hung request.
            redis=redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=3,
                socket_connect_timeout=3,
                max_connections=MAX_REDIS_CONNECTIONS,
            ),
            stream_redis=redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=TAIL_BLOCK_SECONDS + 10,
                socket_connect_timeout=3,
                health_check_interval=30,
                # One connection per open tail, held while its XREAD blocks.
                max_connections=MAX_REDIS_CONNECTIONS,
            ),
            enqueue=Enqueuer.from_settings(settings),
            isolation=IsolationPolicy(
                egress_allow=tuple(settings.egress_allow),
                secret_names=SecretStore.load(settings).names(),
                max_memory_mb=settings.container_max_memory_mb,
                max_cpus=settings.container_max_cpus,
                max_pids=settings.container_max_pids,
            ),
        )

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.stream_redis.close()
        self.enqueue.close()


def get_services() -> Services:
    services: Services = current_app.extensions[EXTENSION_KEY]
    return services


_UNIT_KEY = "ccq_unit_of_work"


def request_unit() -> UnitOfWork:
    """This request's one database session, opened on first use.

    Views commit it themselves (``uow.commit()``), which runs its after-commit hooks;
    whatever is left uncommitted when the request ends is rolled back. WebSocket tails,
    which live for hours, read through short sessions of their own instead, so an open
    tail holds no connection.
    """
    uow: UnitOfWork | None = g.get(_UNIT_KEY)
    if uow is None:
        uow = UnitOfWork(get_services().session_factory)
        setattr(g, _UNIT_KEY, uow)
    return uow


def close_request_unit(_exc: BaseException | None = None) -> None:
    """Teardown: roll back what the request left uncommitted and free its connection."""
    uow: UnitOfWork | None = g.pop(_UNIT_KEY, None)
    if uow is not None:
        uow.close()
