"""Beat's sweeper: finishes what a lost task left open, and purges expired tokens.

A fan-out chord's callback lives in Redis; after a Redis restart (or a chord error) it
never fires. A batch moves on when its items end; a worker that died at that moment, or
a task lost with Redis, would stall it. Everything those would have done is derived from
PostgreSQL, so the sweeper does it instead: it completes fan-outs older than
``SWEEP_AFTER`` whose children all ended, releases what running batches have room for
(and items whose task seems lost), and closes batches whose items all ended.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Protocol

from orchestrator.auth.session_tokens import purge_expired
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import batches
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.fanout import FanoutJoin, FanoutNotReady

# Fan-outs and batches still open this long after they began are looked at (their chord
# or closing task may be lost).
SWEEP_AFTER = timedelta(minutes=2)


class RunSender(Protocol):
    def run(self, run_id: uuid.UUID) -> None: ...


class Sweeper:
    def __init__(self, fanouts: FanoutJoin, batch_flow: BatchFlow, sender: RunSender) -> None:
        self.fanouts = fanouts
        self.batch_flow = batch_flow
        self.sender = sender

    def sweep(self, uow: UnitOfWork) -> dict[str, int]:
        """One pass; what it did, by kind. Each step commits on its own."""
        completed = self._complete_fanouts(uow)
        purged = purge_expired(uow.db)
        uow.commit()
        released = 0
        for owner in batches.owners_running(uow.db):
            released += self.batch_flow.release_owner(uow, owner)
            uow.commit()
        released += self.batch_flow.release_again(uow)
        uow.commit()
        closed = sum(
            1
            for batch_id in batches.overdue(uow.db, SWEEP_AFTER)
            if self.batch_flow.close(uow, batch_id)
        )
        return {
            "fanouts_completed": completed,
            "tokens_purged": purged,
            "batch_items_released": released,
            "batches_closed": closed,
        }

    def _complete_fanouts(self, uow: UnitOfWork) -> int:
        completed = 0
        overdue = FanoutJoin.overdue(uow.db, SWEEP_AFTER)
        uow.rollback()
        for fanout_id in overdue:
            try:
                completion = self.fanouts.complete(uow, fanout_id)
            except FanoutNotReady:
                continue
            if completion.queued_run_id is not None:
                completed += 1
                self.sender.run(completion.queued_run_id)
        return completed
