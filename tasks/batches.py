"""Batch tasks: the chord callback that closes a batch once every item has ended."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from orchestrator import batches
from orchestrator.db import session_scope
from tasks.context import worker_context

# A duplicate delivery can report an item early; the callback looks again this often.
NOT_READY_RETRY_SECONDS = 5.0


@shared_task(bind=True, name="ccq.close_batch", max_retries=None, acks_late=True)
def close_batch(self: Task, batch_id: str) -> dict[str, Any]:
    """Chord callback: record the batch's final state, counts and cost from PostgreSQL."""
    with session_scope(worker_context().session_factory) as db:
        batch = batches.close(db, uuid.UUID(batch_id))
        status = batch.status if batch is not None else None
        finished = batch is None or batch.finished_at is not None
    if not finished:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS)
    return {"batch_id": batch_id, "status": status}
