"""Per-worker-process resources (engine, Redis, Docker), built once after the fork."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import docker
import redis
from celery import current_app

from orchestrator import db
from orchestrator.containers import ContainerRuntime
from orchestrator.executor import RunExecutor
from tasks.celery_app import settings_of


@dataclass(frozen=True)
class WorkerContext:
    executor: RunExecutor


@cache
def worker_context() -> WorkerContext:
    # Built lazily in the pool process: connections must not cross a fork.
    settings = settings_of(current_app)
    engine = db.make_engine(settings)
    executor = RunExecutor(
        settings,
        db.make_session_factory(engine),
        redis.Redis.from_url(settings.redis_url),
        ContainerRuntime(docker.from_env(timeout=120)),
    )
    return WorkerContext(executor=executor)
