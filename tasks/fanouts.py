"""The fan-out task: the chord callback that resumes a parent with its children's results."""

from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.fanout import FanoutNotReady
from tasks import names
from tasks.base import CcqTask

# A chord fires when its last child task returns; a child that a duplicate delivery
# reported early is still running, so the callback looks again this often.
NOT_READY_RETRY_SECONDS = 2.0


@shared_task(base=CcqTask, bind=True, name=names.RESUME_PARENT)
def resume_parent(self: CcqTask, fanout_id: str) -> dict[str, Any]:
    """Chord callback: queue the parent's follow-up run with every child's result.

    Reads the outcome from PostgreSQL (not the chord's results), so it is safe to run
    more than once; the follow-up run is created once per fan-out.
    """
    try:
        with UnitOfWork(self.context.session_factory) as uow:
            completion = self.context.fanouts.complete(uow, uuid.UUID(fanout_id))
    except FanoutNotReady as exc:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS, exc=exc) from None
    if completion.queued_run_id is not None:
        self.context.enqueue.run(completion.queued_run_id)
    return {"fanout_id": fanout_id, "status": completion.status}
