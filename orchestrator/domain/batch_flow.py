"""Moving batches along: releasing items a window at a time and closing finished batches.

Used by the API (a new batch's first window), by the worker's run listener (an item
ended: release the next, or close the batch) and by beat's sweeper (what a lost task
left). Each step works in the caller's unit of work; what it sends goes through a
:class:`BatchSender` (``tasks.enqueue.Enqueuer`` in ccq), so this module knows no Celery.
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

import redis
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import batches
from orchestrator.errors import QueueUnavailable
from orchestrator.streams import batch_events

log = logging.getLogger(__name__)


class BatchSender(Protocol):
    """Sends tasks; raises :class:`QueueUnavailable` when the queue cannot take them."""

    def batch_items(self, run_ids: list[uuid.UUID]) -> None: ...

    def notify_batch(self, batch_id: uuid.UUID) -> None: ...


class BatchFlow:
    def __init__(
        self,
        sender: BatchSender,
        redis_client: redis.Redis,
        *,
        max_runs_per_owner: int,
        ttl: int,
        window_per_owner: int | None = None,
    ) -> None:
        self.sender = sender
        self.redis = redis_client
        self.max_runs_per_owner = max_runs_per_owner
        # CCQ_BATCH_WINDOW_PER_OWNER; without it, the owner's concurrency.
        self.window_per_owner = window_per_owner or max_runs_per_owner
        self.ttl = ttl

    def release(self, uow: UnitOfWork, batch_id: uuid.UUID) -> int:
        """Release the next items of the batch's owner (this batch's or their other
        batches') while the owner's window has room, and send them; how many."""
        owner = batches.owner_of(uow.db, batch_id)
        return 0 if owner is None else sum(map(len, self._release(uow, owner).values()))

    def release_owner(self, uow: UnitOfWork, owner: str) -> int:
        """Release the owner's next batch items while their window has room; how many."""
        return sum(map(len, self._release(uow, owner).values()))

    def _release(self, uow: UnitOfWork, owner: str) -> dict[uuid.UUID, list[uuid.UUID]]:
        """Sent before the caller commits the release: if sending fails, nothing is
        marked released and a later call releases them again (a run delivered twice
        still runs once)."""
        released = batches.release(uow.db, owner, self.max_runs_per_owner, self.window_per_owner)
        self.sender.batch_items([run_id for ids in released.values() for run_id in ids])
        return released

    def release_again(self, uow: UnitOfWork) -> int:
        """Re-send items released long ago and still queued (their task may be lost)."""
        run_ids = batches.release_again(uow.db, batches.RELEASE_AGAIN_AFTER)
        self.sender.batch_items(run_ids)
        return len(run_ids)

    def item_ended(self, uow: UnitOfWork, run_id: uuid.UUID) -> None:
        """After an item's run ended: release the owner's next items (the freed slot may
        go to another of their batches), and close the item's batch when it released
        nothing of its own (a no-op for a run outside batches). Commits."""
        batch_id = batches.batch_of(uow.db, run_id)
        if batch_id is None:
            return
        owner = batches.owner_of(uow.db, batch_id)
        released = self._release(uow, owner) if owner is not None else {}
        uow.commit()
        if not released.get(batch_id):
            self.close(uow, batch_id)

    def close(self, uow: UnitOfWork, batch_id: uuid.UUID) -> str | None:
        """Close the batch if every item has ended, and commit: its final status (None
        while items are still going). Only the call that closes it announces it, after
        the commit, so repeats are harmless."""
        batch, closed_now = batches.close(uow.db, batch_id)
        if batch is None:
            uow.rollback()
            return "deleted"
        if batch.finished_at is None:
            uow.rollback()
            return None
        status, notify_url = str(batch.status), batch.notify_url
        if closed_now:
            uow.after_commit(lambda db: self._announce_closed(db, batch_id, notify_url))
        uow.commit()
        return status

    def _announce_closed(self, db: DbSession, batch_id: uuid.UUID, notify_url: str | None) -> None:
        """``ccq.batch.finished`` on the batch's stream, then its webhook if it has one.
        Never raises: a broker outage loses the notification (with a warning) rather than
        failing the caller, whose close has committed."""
        batch_events.publish_batch(self.redis, db, batch_id, batch_events.BATCH_FINISHED, self.ttl)
        if not notify_url:
            return
        try:
            self.sender.notify_batch(batch_id)
        except QueueUnavailable as exc:
            log.warning("batch %s: notification not queued: %s", batch_id, type(exc).__name__)
