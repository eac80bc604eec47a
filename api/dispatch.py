"""Committing a request's change: then its lifecycle events are published and its tasks
queued, in that order, as after-commit hooks of the request's unit of work."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session as DbSession

from api.errors import DependencyDown
from api.extensions import Services
from orchestrator.db.models import Run, RunStatus
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.sessions import SessionService
from orchestrator.errors import QueueUnavailable
from orchestrator.streams.events import publish_pending

log = logging.getLogger(__name__)


def _stream_ttl(services: Services) -> int:
    """Every stream the API writes to expires (CCQ_EVENT_STREAM_TTL after its last event)."""
    return int(services.settings.event_stream_ttl)


def commit_and_announce(uow: UnitOfWork, services: Services, service: SessionService) -> None:
    """Commit, then publish the change's lifecycle events (run cancelled, session stopped)."""
    outbox = service.outbox
    uow.after_commit(lambda db: publish_pending(services.redis, db, outbox, _stream_ttl(services)))
    uow.commit()


def commit_and_queue(
    uow: UnitOfWork,
    services: Services,
    service: SessionService,
    runs: Sequence[Run],
    send: Callable[[], None],
    *,
    unavailable: str,
) -> None:
    """Commit; then publish the change's events (stored with their stream IDs in a commit
    of their own); then ``send`` its new runs' tasks.

    Only in that order: a task must never find its row missing, and a worker numbers a
    run's events after those already stored (its ``ccq.run.queued``). If Redis is down at
    that point, the new runs are marked failed (they would otherwise wait forever for a
    task that was never sent) and the client gets a 503, saying ``unavailable``, that it
    can retry.
    """
    outbox = service.outbox
    failed: list[Exception] = []

    def publish(db: DbSession) -> None:
        try:
            publish_pending(services.redis, db, outbox, _stream_ttl(services))
        except redis.RedisError as exc:
            failed.append(exc)

    def queue(db: DbSession) -> None:
        # The events committed first: the worker numbers a run's events after them.
        if runs and not failed:
            try:
                send()
            except QueueUnavailable as exc:
                failed.append(exc)
        if failed:
            log.warning("could not queue runs %s: %s", [str(r.id) for r in runs], failed[0])
            fail_unqueued(db, [r.id for r in runs])

    uow.after_commit(publish)
    uow.after_commit(queue)
    uow.commit()
    if failed:
        raise DependencyDown(unavailable)


def commit_and_queue_run(
    uow: UnitOfWork, services: Services, service: SessionService, run: Run | None
) -> None:
    """:func:`commit_and_queue` for one interactive run (or none: an idempotent repeat)."""
    runs = [run] if run is not None else []
    commit_and_queue(
        uow,
        services,
        service,
        runs,
        lambda: services.enqueue.run(runs[0].id),
        unavailable="redis is unavailable: the run was not queued (it is marked failed); "
        "retry later",
    )


def fail_unqueued(db: DbSession, run_ids: Sequence[uuid.UUID]) -> None:
    db.execute(
        update(Run)
        .where(Run.id.in_(run_ids), Run.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.FAILED,
            error="not queued: redis was unavailable",
            finished_at=datetime.now(UTC),
        )
    )
