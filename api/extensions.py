"""The per-process resources the views use, bound to the app by the factory."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import engine as db
from orchestrator.settings import Settings
from tasks.celery_app import make_celery

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
    celery: Celery

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = db.make_engine(settings)
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
            celery=make_celery(settings),
        )

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        self.stream_redis.close()
        self.celery.close()


def get_services() -> Services:
    services: Services = current_app.extensions[EXTENSION_KEY]
    return services
