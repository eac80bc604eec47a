"""Beat's sweeper: finishes what a lost task left open, and purges expired tokens.

A fan-out chord's callback lives in Redis; after a Redis restart (or a chord error) it
never fires. A batch moves on when its items end; a worker that died at that moment, or
a task lost with Redis, would stall it. Everything those would have done is derived from
PostgreSQL, so the sweeper does it instead: it completes fan-outs older than
``SWEEP_AFTER`` whose children all ended, releases what running batches have room for
(and items whose task seems lost), and closes batches whose items all ended.
"""

from __future__ import annotations

from celery import current_app, shared_task

from orchestrator.auth.session_tokens import purge_expired
from orchestrator.db.engine import session_scope
from orchestrator.domain import batches
from orchestrator.domain.fanout import FanoutNotReady
from tasks.batches import finish as finish_batch
from tasks.context import worker_context
from tasks.fanouts import SWEEP_AFTER, queue_followup
from tasks.release import queue_items, release_items


@shared_task(name="ccq.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    """Beat: complete fan-outs whose chord was lost, move stalled batches on; purge
    expired session tokens."""
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
        running = batches.running(db)
    released = sum(
        release_items(current_app, context.session_factory, context.settings, batch_id)
        for batch_id in running
    )
    with session_scope(context.session_factory) as db:
        again = batches.release_again(db, batches.RELEASE_AGAIN_AFTER)
        queue_items(current_app, context.settings, again)
    with context.session_factory() as db:
        stalled = batches.overdue(db, SWEEP_AFTER)
    closed = sum(1 for batch_id in stalled if finish_batch(context, batch_id))
    return {
        "fanouts_completed": completed,
        "tokens_purged": purged,
        "batch_items_released": released + len(again),
        "batches_closed": closed,
    }
