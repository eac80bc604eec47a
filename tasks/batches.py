"""Batch tasks: the chord callback that closes a batch once every item has ended."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from orchestrator import batch_events, batches
from orchestrator.db import session_scope
from tasks.context import WorkerContext, worker_context
from tasks.notify import queue_batch_notification

# A duplicate delivery can report an item early; the callback looks again this often.
NOT_READY_RETRY_SECONDS = 5.0


@shared_task(bind=True, name="ccq.close_batch", max_retries=None, acks_late=True)
def close_batch(self: Task, batch_id: str) -> dict[str, Any]:
    """Chord callback (and after a cancel): record the batch's final state, counts and
    cost from PostgreSQL; then, once, announce it on the batch's stream and webhook."""
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
