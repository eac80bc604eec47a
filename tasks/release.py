"""Handing batch items to Celery a window at a time (see ``orchestrator.domain.batches``).

Called by the API for a new batch, by the worker when an item ends, and by the sweeper.
Tasks are sent before the release commits: if sending fails, nothing is marked released
and a later call releases the items again; a run delivered twice still runs once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from celery import Celery
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.engine import session_scope
from orchestrator.domain import batches
from orchestrator.settings import Settings
from tasks.celery_app import batch_queue


def release_items(
    celery: Celery,
    session_factory: sessionmaker[DbSession],
    settings: Settings,
    batch_id: uuid.UUID,
) -> int:
    """Queue the batch's next items while its window has room; how many were queued."""
    with session_scope(session_factory) as db:
        run_ids = batches.release(db, batch_id, settings.max_runs_per_owner)
        queue_items(celery, settings, run_ids)
    return len(run_ids)


def queue_items(celery: Celery, settings: Settings, run_ids: Iterable[uuid.UUID]) -> None:
    """Batch items go to the batch queue, which workers take from in turn with the
    interactive one."""
    queue = batch_queue(settings)
    for run_id in run_ids:
        celery.send_task("ccq.run_prompt", args=[str(run_id)], queue=queue)
