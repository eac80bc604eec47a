"""Beat's sweeper: finishes what a lost chord left open, and purges expired tokens.

A chord's callback lives in Redis; after a Redis restart (or a chord error) it never
fires. Everything it would have done is derived from PostgreSQL, so the sweeper does it
instead, once the fan-out or batch is older than ``SWEEP_AFTER`` and all its runs ended.
"""

from __future__ import annotations

from celery import shared_task

from orchestrator import batches
from orchestrator.db import session_scope
from orchestrator.fanout import FanoutNotReady
from orchestrator.session_tokens import purge_expired
from tasks.batches import finish as finish_batch
from tasks.context import worker_context
from tasks.fanouts import SWEEP_AFTER, queue_followup


@shared_task(name="ccq.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    """Beat: complete fan-outs and close batches whose chord was lost; purge expired
    session tokens."""
    context = worker_context()
    completed = 0
    for fanout_id in context.fanouts.overdue(SWEEP_AFTER):
        try:
            completion = context.fanouts.complete(fanout_id)
        except FanoutNotReady:
            continue
        if completion.queued_run_id is not None:
            completed += 1
        queue_followup(completion.queued_run_id)
    with session_scope(context.session_factory) as db:
        purged = purge_expired(db)
        lost_batches = batches.overdue(db, SWEEP_AFTER)
    closed = sum(1 for batch_id in lost_batches if finish_batch(context, batch_id))
    return {"fanouts_completed": completed, "tokens_purged": purged, "batches_closed": closed}
