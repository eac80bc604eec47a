"""Batch tasks: the chord callback that closes a batch once every item has ended."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from orchestrator import batch_events, batches
from orchestrator.db import session_scope
from tasks.context import worker_context
from tasks.notify import queue_batch_notification

# A duplicate delivery can report an item early; the callback looks again this often.
NOT_READY_RETRY_SECONDS = 5.0


@shared_task(bind=True, name="ccq.close_batch", max_retries=None, acks_late=True)
def close_batch(self: Task, batch_id: str) -> dict[str, Any]:
    """Chord callback (and after a cancel): record the batch's final state, counts and
    cost from PostgreSQL; then, once, announce it on the batch's stream and webhook."""
    context = worker_context()
    with session_scope(context.session_factory) as db:
        batch, closed_now = batches.close(db, uuid.UUID(batch_id))
        status = batch.status if batch is not None else None
        finished = batch is None or batch.finished_at is not None
        notify_url = batch.notify_url if batch is not None else None
    if not finished:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS)
    if closed_now:
        batch_events.publish_batch(
            context.redis,
            context.session_factory,
            uuid.UUID(batch_id),
            batch_events.BATCH_FINISHED,
            int(context.settings.event_stream_ttl),
        )
        queue_batch_notification(batch_id, notify_url)
    return {"batch_id": batch_id, "status": status}
