"""Beat's reconciler: no run stays ``running`` without a live worker, and no session keeps
a queued run that nothing will dispatch.

Every ``CCQ_RECONCILE_INTERVAL`` seconds (a worker runs it; it needs the Docker engine):

- **Lost runs.** A ``running`` run whose lease ran out and whose session lock is free is
  settled by the lost-run rule (``orchestrator.runtime.lost_runs``): its container is
  removed, then it fails ``worker_lost`` or, with ``retry_on_worker_loss``, is queued and
  dispatched again.
- **Lost tasks.** A session's next queued run (outside batches: the sweeper looks after
  those) that no delivery has touched for ``CCQ_REDISPATCH_AFTER`` seconds, while the
  broker's queue is empty, is dispatched again. Its task was lost (a Redis that lost its
  data) or is held by a worker that died. Every delivery marks the run (:func:`touch`),
  so a task that waits its turn is never duplicated; one reserved by a busy worker may
  be, which is harmless (a delivery claims the run only if it is still queued, under
  its row lock).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Protocol

import redis
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import aliased

from orchestrator.db.models import Run, RunStatus, Session
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.run_lifecycle import RunFinished, RunListeners
from orchestrator.runtime import leases
from orchestrator.runtime.containers import ContainerError
from orchestrator.runtime.locks import lock_ttl_ms
from orchestrator.runtime.lost_runs import LostRuns
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# Runs looked at per pass, per kind: a backlog is worked off over several passes.
BATCH = 100
# A delivery's mark on its run lasts this long; retries renew it well within it.
TOUCH_TTL_SECONDS = 30


class RunSender(Protocol):
    def run(self, run_id: uuid.UUID) -> None: ...


def _touch_key(run_id: uuid.UUID | str) -> str:
    return f"ccq:run:delivery:{run_id}"


def touch(client: redis.Redis, run_id: uuid.UUID | str) -> None:
    """A delivery of the run's task is alive (called at every start and retry)."""
    client.set(_touch_key(run_id), b"1", ex=TOUCH_TTL_SECONDS)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        lost_runs: LostRuns,
        listeners: RunListeners,
        sender: RunSender,
    ) -> None:
        self.settings = settings
        self.redis = redis_client
        self.lost_runs = lost_runs
        self.listeners = listeners
        self.sender = sender

    def reconcile(self, uow: UnitOfWork) -> dict[str, int]:
        """One pass; what it did, by kind."""
        counts = {"lost_failed": 0, "lost_requeued": 0, "redispatched": 0, "errors": 0}
        for run_id, session_id in leases.expired(uow.db, BATCH):
            uow.rollback()
            if lock_ttl_ms(self.redis, session_id) > 0:
                continue  # a live delivery (PostgreSQL was unreachable for its renewals)
            try:
                status = self.lost_runs.settle(uow, run_id)
            except ContainerError:
                # The old CLI may still live: nothing is settled until the engine answers.
                log.exception("run %s: could not remove its container", run_id)
                counts["errors"] += 1
                continue
            if status == RunStatus.QUEUED:
                counts["lost_requeued"] += 1
                self.sender.run(run_id)
            elif status is not None and RunStatus(status).is_final:
                counts["lost_failed"] += 1
                self.listeners.announce_finished(RunFinished(run_id, status), uow)
        uow.rollback()
        counts["redispatched"] = self._redispatch(uow)
        return counts

    def _redispatch(self, uow: UnitOfWork) -> int:
        if self.redis.llen(self.settings.instance):
            return 0  # tasks wait in the broker: a queued run's may be among them
        db = uow.db
        earlier = aliased(Run)
        before = func.now() - timedelta(seconds=self.settings.redispatch_after)
        waiting = db.scalars(
            select(Run.id)
            .join(Session, Session.id == Run.session_id)
            .where(
                Run.status == RunStatus.QUEUED,
                Session.batch_id.is_(None),
                func.coalesce(Run.dispatched_at, Run.created_at) < before,
                ~exists().where(
                    and_(
                        earlier.session_id == Run.session_id,
                        earlier.seq < Run.seq,
                        earlier.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
                    )
                ),
            )
            .order_by(Run.created_at)
            .limit(BATCH)
        ).all()
        lost = [run_id for run_id in waiting if not self.redis.exists(_touch_key(run_id))]
        if not lost:
            uow.rollback()
            return 0
        # Marked first: a pass that dies after this re-sends them a little later, not twice.
        db.execute(update(Run).where(Run.id.in_(lost)).values(dispatched_at=func.now()))
        uow.commit()
        for run_id in lost:
            log.warning("run %s: queued with no live task; dispatching it again", run_id)
            self.sender.run(run_id)
        return len(lost)
