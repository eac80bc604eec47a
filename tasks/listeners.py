"""Who reacts when a run starts, is recorded or finishes: every listener, in one place.

The executor announces those moments (``orchestrator.domain.run_lifecycle``) and knows
nothing of what follows. In ccq:

- a batch item's start and end go to its batch's stream (the end inside the recording
  transaction, so it always precedes the batch's own end);
- a finished batch item releases the batch's next items, or closes the batch;
- a finished run whose session has a ``notify_url`` queues its webhook.

A fan-out's children need no listener: their tasks are the members of the chord whose
callback resumes the parent.
"""

from __future__ import annotations

import redis

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.run_lifecycle import RunFinished, RunListeners, RunRecording, RunStarted
from orchestrator.notify.notices import run_wants_notice
from orchestrator.settings import Settings
from orchestrator.streams import batch_events
from tasks.enqueue import Enqueuer


def run_listeners(
    redis_client: redis.Redis,
    settings: Settings,
    batches: BatchFlow,
    enqueue: Enqueuer,
) -> RunListeners:
    ttl = int(settings.event_stream_ttl)

    def batch_item_started(event: RunStarted, uow: UnitOfWork) -> None:
        if event.batch_id is not None:
            batch_events.publish_item(redis_client, uow.db, event.run_id, ttl)

    def batch_item_recorded(event: RunRecording) -> None:
        if event.batch_id is not None:
            batch_events.publish_item_end(event.db, redis_client, event.batch_id, event.run, ttl)

    def batch_item_finished(event: RunFinished, uow: UnitOfWork) -> None:
        # Fails only if PostgreSQL or Redis does: beat's sweeper then moves the batch on.
        batches.item_ended(uow, event.run_id)

    def webhook_of_run(event: RunFinished, uow: UnitOfWork) -> None:
        wanted = run_wants_notice(uow.db, event.run_id)
        uow.rollback()  # a read: end it before sending
        if wanted:
            enqueue.notify_run(event.run_id)

    return RunListeners(
        started=[batch_item_started],
        recording=[batch_item_recorded],
        finished=[batch_item_finished, webhook_of_run],
    )
