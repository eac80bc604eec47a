"""Fan-out tasks: the chord callback that resumes a parent with its children's results."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from celery import Task, shared_task

from orchestrator.domain.fanout import FanoutNotReady
from tasks.context import worker_context
from tasks.runs import run_prompt

# A chord fires when its last child task returns; a child that a duplicate delivery
# reported early is still running, so the callback looks again this often.
NOT_READY_RETRY_SECONDS = 2.0
# Fan-outs still open this long after they began are completed by the sweeper if every
# child has ended (their chord was lost: a Redis flush, a chord error).
SWEEP_AFTER = timedelta(minutes=2)


def queue_followup(run_id: uuid.UUID | None) -> None:
    if run_id is not None:
        run_prompt.delay(str(run_id))


@shared_task(bind=True, name="ccq.resume_parent", max_retries=None, acks_late=True)
def resume_parent(self: Task, fanout_id: str) -> dict[str, Any]:
    """Chord callback: queue the parent's follow-up run with every child's result.

    Reads the outcome from PostgreSQL (not the chord's results), so it is safe to run
    more than once; the follow-up run is created once per fan-out.
    """
    try:
        completion = worker_context().fanouts.complete(uuid.UUID(fanout_id))
    except FanoutNotReady as exc:
        raise self.retry(countdown=NOT_READY_RETRY_SECONDS, exc=exc) from None
    queue_followup(completion.queued_run_id)
    return {"fanout_id": fanout_id, "status": completion.status}
