"""Run tasks: thin wrappers that hand IDs to the orchestrator's executor."""

from __future__ import annotations

import random
import uuid
from typing import Any

import redis
from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from orchestrator.db.models import RunStatus
from orchestrator.domain.admission import NoSlot
from orchestrator.runtime.executor import NotYourTurn
from tasks.batches import advance as advance_batch
from tasks.context import worker_context
from tasks.notify import queue_run_notification

# How often a run whose turn has not come looks again; it holds no worker slot meanwhile.
TURN_RETRY_SECONDS = 1.0
# A run waiting for its owner's (or batch's) concurrency slot: longer, with jitter, so
# runs waiting for the same owner's slots do not all come back at once.
SLOT_RETRY_SECONDS = (2.0, 5.0)
# PostgreSQL or Redis down: back off up to this. The task must not fail: as a fan-out's
# chord member, a failed task would leave the parent waiting forever.
OUTAGE_RETRY_MAX_SECONDS = 60.0


FINAL_STATES = frozenset(s.value for s in RunStatus if s.is_final)


# Results are kept: chords join on them, and a redelivery reports what it did.
@shared_task(
    bind=True, name="ccq.run_prompt", max_retries=None, acks_late=True, ignore_result=False
)
def run_prompt(self: Task, run_id: str) -> dict[str, Any]:
    """Execute one run of a session (idempotent: a redelivery never runs the CLI twice)."""
    try:
        outcome = worker_context().executor.execute(uuid.UUID(run_id))
    except NotYourTurn as exc:
        raise self.retry(countdown=TURN_RETRY_SECONDS, exc=exc) from None
    except NoSlot as exc:
        wait = random.uniform(*SLOT_RETRY_SECONDS)  # noqa: S311 - jitter, not a secret
        raise self.retry(countdown=wait, exc=exc) from None
    except (OperationalError, redis.RedisError) as exc:
        countdown = min(OUTAGE_RETRY_MAX_SECONDS, 2.0 ** min(self.request.retries, 6))
        raise self.retry(countdown=countdown, exc=exc) from None
    if outcome["status"] in FINAL_STATES:
        advance_batch(worker_context(), uuid.UUID(run_id))  # a batch item: the next ones
        queue_run_notification(run_id)  # if its session has a notify_url; never raises
    return outcome
