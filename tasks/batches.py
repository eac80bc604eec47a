"""Batch tasks: moving a batch on when an item ends, and closing it once all have."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Task, current_app, shared_task
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError

from orchestrator.db.engine import session_scope
from orchestrator.domain import batches
from orchestrator.streams import batch_events
from tasks.context import WorkerContext, worker_context
from tasks.notify import queue_batch_notification
from tasks.release import release_items

log = logging.getLogger(__name__)

# A cancelled batch's running items take a moment to stop; the closer looks again this often.
NOT_READY_RETRY_SECONDS = 5.0


def advance(context: WorkerContext, run_id: uuid.UUID) -> None:
    """After a run ended: if it is a batch item, release the batch's next items, or close
    the batch when none is left to release (a no-op while other items are running)."""
    try:
        with context.session_factory() as db:
            batch_id = batches.batch_of(db, run_id)
        if batch_id is None:
            return
        released = release_items(current_app, context.session_factory, context.settings, batch_id)
        if not released:
            finish(context, batch_id)
    except (OperationalError, redis.RedisError, KombuOperationalError) as exc:
        # The run is recorded; beat's sweeper releases and closes what this could not.
        log.warning("batch item %s: could not move its batch on: %s", run_id, exc)


@shared_task(bind=True, name="ccq.close_batch", max_retries=None, acks_late=True)
def close_batch(self: Task, batch_id: str) -> dict[str, Any]:
    """After a cancel: once its running items have stopped, record the batch's final
    state, counts and cost from PostgreSQL; then, once, announce it."""
    status = finish(worker_context(), uuid.UUID(batch_id))
    if status is None:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS)
    return {"batch_id": batch_id, "status": status}


def finish(context: WorkerContext, batch_id: uuid.UUID) -> str | None:
    """Close the batch if every item has ended: its final status (None while items are
    still going). Only the call that closes it announces it, so repeats are harmless."""
    with session_scope(context.session_factory) as db:
        batch, closed_now = batches.close(db, batch_id)
        if batch is None:
            return "deleted"
        if batch.finished_at is None:
            return None
        status, notify_url = str(batch.status), batch.notify_url
    if closed_now:
        batch_events.publish_batch(
            context.redis,
            context.session_factory,
            batch_id,
            batch_events.BATCH_FINISHED,
            int(context.settings.event_stream_ttl),
        )
        queue_batch_notification(batch_id, notify_url)
    return status
