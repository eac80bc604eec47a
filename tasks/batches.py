"""The batch task: closing a cancelled batch once its running items have stopped."""

from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task

from orchestrator.db.unit_of_work import UnitOfWork
from tasks import names
from tasks.base import CcqTask

# A cancelled batch's running items take a moment to stop; the closer looks again this often.
NOT_READY_RETRY_SECONDS = 5.0


@shared_task(base=CcqTask, bind=True, name=names.CLOSE_BATCH)
def close_batch(self: CcqTask, batch_id: str) -> dict[str, Any]:
    """After a cancel: once its running items have stopped, record the batch's final
    state, counts and cost from PostgreSQL; then, once, announce it."""
    with UnitOfWork(self.context.session_factory) as uow:
        status = self.context.batches.close(uow, uuid.UUID(batch_id))
    if status is None:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS)
    return {"batch_id": batch_id, "status": status}
