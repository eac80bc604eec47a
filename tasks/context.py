"""Per-worker-process resources (engine, Redis, Docker), built once after the fork."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import redis
from celery import current_app
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import engine as db
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.fanout import FanoutJoin
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.executor import RunExecutor
from orchestrator.runtime.host import HostResources
from orchestrator.runtime.janitor import Janitor
from orchestrator.runtime.lost_runs import LostRuns
from orchestrator.runtime.reconciler import Reconciler
from orchestrator.runtime.redis_client import worker_redis
from orchestrator.settings import Settings
from tasks.celery_app import settings_of
from tasks.enqueue import Enqueuer
from tasks.listeners import run_listeners


@dataclass(frozen=True)
class WorkerContext:
    executor: RunExecutor
    janitor: Janitor
    reconciler: Reconciler
    fanouts: FanoutJoin
    batches: BatchFlow
    enqueue: Enqueuer
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    settings: Settings


@cache
def worker_context() -> WorkerContext:
    # Built lazily in the pool process: connections must not cross a fork.
    settings = settings_of(current_app)
    host = HostResources(
        settings=settings,
        session_factory=db.make_session_factory(db.make_engine(settings)),
        redis=worker_redis(settings.redis_url),  # bounded timeouts: see its module
        runtime=ContainerRuntime.connected(),
    )
    enqueue = Enqueuer(current_app, settings)
    batches = BatchFlow(
        enqueue,
        host.redis,
        max_runs_per_owner=settings.max_runs_per_owner,
        ttl=int(settings.event_stream_ttl),
        window_per_owner=settings.batch_window_per_owner,
    )
    listeners = run_listeners(host.redis, settings, batches, enqueue)
    lost_runs = LostRuns(host.redis, host.runtime, listeners)
    return WorkerContext(
        executor=RunExecutor(host, listeners, lost_runs=lost_runs),
        janitor=Janitor(host),
        reconciler=Reconciler(settings, host.redis, lost_runs, listeners, enqueue),
        fanouts=FanoutJoin(host.redis),
        batches=batches,
        enqueue=enqueue,
        session_factory=host.session_factory,
        redis=host.redis,
        settings=settings,
    )
