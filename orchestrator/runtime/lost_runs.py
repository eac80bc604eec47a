"""The lost-run rule: what happens to a run whose worker died under it.

A run is lost when it is ``running``, its lease in PostgreSQL ran out and its session
lock in Redis is free (``orchestrator.runtime.leases``). Beat's reconciler finds such runs;
a redelivery of the run's own task may find one first. Either way :meth:`LostRuns.settle`
applies one rule:

1. Take the session lock, so no delivery starts a CLI meanwhile.
2. Make sure the old CLI is dead: its worker is gone, but the CLI ran through
   ``docker exec`` and outlives it. The session's container is removed (the engine
   kills its whole cgroup; the session's files stay, and its next run gets a new
   container). If the engine cannot do it, nothing is settled: the next pass tries again.
3. Settle the run:

   - by default it ends ``failed`` with ``error_code`` ``worker_lost``, keeping the events
     it streamed, and the session goes back to ``idle``: its next prompt runs;
   - with the option ``retry_on_worker_loss`` (session or run) it is queued again and
     starts over (a new CLI resuming the same conversation) as long as it has had fewer
     than ``MAX_ATTEMPTS`` deliveries; after that it fails as above;
   - a run whose cancellation was asked for ends ``cancelled``.
"""

from __future__ import annotations

import logging
import uuid

import redis
from sqlalchemy import select

from orchestrator.db.engine import ROW_LOCK
from orchestrator.db.models import Run, RunStatus, Session, SessionStatus
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.run_endings import WORKER_LOST, finish_without_cli
from orchestrator.domain.run_lifecycle import RunListeners, RunRecording
from orchestrator.runtime import leases
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.locks import SessionLock
from orchestrator.streams.events import (
    PendingEvent,
    next_run_seq,
    publish_pending,
    store_unstored,
)

log = logging.getLogger(__name__)

# Deliveries a run gets in all when ``retry_on_worker_loss`` is on.
MAX_ATTEMPTS = 3
RETRY_OPTION = "retry_on_worker_loss"
RUN_REQUEUED = "ccq.run.requeued"


class LostRuns:
    def __init__(
        self,
        redis_client: redis.Redis,
        runtime: ContainerRuntime,
        listeners: RunListeners,
    ) -> None:
        self.redis = redis_client
        self.runtime = runtime
        self.listeners = listeners

    def settle(self, uow: UnitOfWork, run_id: uuid.UUID) -> str | None:
        """Apply the rule to ``run_id`` if it is lost; its status afterwards.

        None: its session lock is held (a live delivery, or a settlement under way).
        A run that ends here is announced ``recording`` (in the transaction) but not
        ``finished``, and one queued again is not dispatched: the caller does either.

        Raises:
            ContainerError: the old container could not be removed (nothing settled).
        """
        session_id = uow.db.scalar(select(Run.session_id).where(Run.id == run_id))
        uow.rollback()
        if session_id is None:
            return "missing"
        lock = SessionLock(self.redis, session_id, f"lost-run:{uuid.uuid4().hex}")
        if not lock.acquire():
            return None
        try:
            return self._settle_locked(uow, run_id, session_id)
        finally:
            lock.release()

    def _settle_locked(self, uow: UnitOfWork, run_id: uuid.UUID, session_id: uuid.UUID) -> str:
        db = uow.db
        outbox: list[PendingEvent] = []
        uow.after_commit(lambda db: publish_pending(self.redis, db, outbox))
        # Lock order everywhere: session row, then run row. Held while the container
        # goes, so a worker that was only slow cannot renew its lease meanwhile.
        session = db.get(Session, session_id, with_for_update=ROW_LOCK)
        run = db.get(Run, run_id, with_for_update=ROW_LOCK)
        if session is None or run is None:
            uow.rollback()
            return "missing"
        if run.status != RunStatus.RUNNING or not leases.is_expired(db, run):
            status = run.status
            uow.rollback()
            return status
        self.runtime.remove(str(session_id))  # the old CLI dies with its container
        try:
            stored = store_unstored(self.redis, db, session_id, run.id)
        except redis.RedisError:
            # Settled all the same: a lost run must not wait for Redis as well.
            log.warning("run %s: its last streamed events could not be read", run.id)
        else:
            if stored:
                log.info("run %s: stored %d events its worker had only streamed", run.id, stored)
            db.flush()  # before next_run_seq counts them
        where = f"{run.worker_host or '?'} pid {run.worker_pid or '?'}"
        log.warning("run %s lost its worker (%s, attempt %d)", run.id, where, run.attempts)
        if retries_after_loss(run, session):
            run.status = RunStatus.QUEUED
            leases.clear(run)
            if session.status != SessionStatus.STOPPED:
                session.status = SessionStatus.IDLE
            data = {"reason": WORKER_LOST, "attempts": run.attempts, "max_attempts": MAX_ATTEMPTS}
            outbox.append(
                PendingEvent(session.id, run.id, next_run_seq(db, run.id), RUN_REQUEUED, data)
            )
            uow.commit()
            return RunStatus.QUEUED
        if run.cancel_requested:
            finish_without_cli(db, run, session, RunStatus.CANCELLED, None, outbox)
        else:
            error = (
                f"worker_lost: the worker running this run stopped ({where}) after "
                f"{run.attempts} deliver{'y' if run.attempts == 1 else 'ies'}; "
                "its output so far is kept"
            )
            finish_without_cli(
                db, run, session, RunStatus.FAILED, error, outbox, error_code=WORKER_LOST
            )
        db.flush()
        self.listeners.announce_recording(RunRecording(db, run, session.batch_id))
        uow.commit()
        return run.status


def retries_after_loss(run: Run, session: Session) -> bool:
    """Whether the rule queues ``run`` again rather than ending it."""
    options = {**session.options, **run.options}
    return (
        bool(options.get(RETRY_OPTION))
        and run.attempts < MAX_ATTEMPTS
        and not run.cancel_requested
        and session.status != SessionStatus.STOPPED
    )
