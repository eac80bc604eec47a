"""After a commit: publish its lifecycle events and queue its tasks, in that order."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import update

from api.errors import DependencyDown
from api.extensions import Services
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Run, RunStatus
from orchestrator.domain.sessions import SessionService
from orchestrator.streams.events import publish_pending

log = logging.getLogger(__name__)


def announce(services: Services, service: SessionService) -> None:
    """Publish the lifecycle events of a committed change (run queued, cancelled, ...)."""
    publish_pending(services.redis, services.session_factory, service.outbox)


def dispatch_run(services: Services, service: SessionService, run: Run | None) -> None:
    """Announce a committed change and queue its new run, in that order.

    Only after the commit: the task must never find its row missing. If Redis is down at
    this point, the run is marked failed (it would otherwise wait forever for a task that
    was never sent) and the client gets a 503 it can retry.
    """
    try:
        announce(services, service)
        if run is not None:
            services.celery.send_task("ccq.run_prompt", args=[str(run.id)])
    except (redis.RedisError, KombuOperationalError) as exc:
        log.warning("could not queue run %s: %s", run.id if run else None, exc)
        if run is not None:
            fail_unqueued(services, run.id)
        raise DependencyDown(
            "redis is unavailable: the run was not queued (it is marked failed); retry later"
        ) from None


def fail_unqueued(services: Services, run_id: uuid.UUID) -> None:
    with session_scope(services.session_factory) as db:
        db.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
            .values(
                status=RunStatus.FAILED,
                error="not queued: redis was unavailable",
                finished_at=datetime.now(UTC),
            )
        )
