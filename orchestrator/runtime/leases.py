"""Run leases: a running run's claim in PostgreSQL, held by the worker executing it.

The claim writes ``lease_holder`` (unique to that delivery), the host and pid, and
``lease_expires_at``; a thread renews it every third of the lease. Expiry is counted on
the database's clock, so workers' clocks never matter. A run whose lease ran out and
whose Redis session lock is free was lost with its worker: beat's reconciler
(``orchestrator.runtime.reconciler``) settles it.

Both signals must be gone before a run counts as lost: a PostgreSQL outage stops the
renewals but not the lock's, and a Redis that lost its data drops the lock but not the
lease.

A renewal that finds the lease no longer the holder's (the reconciler settled the run
meanwhile) sets :attr:`RunLease.lost`: the executor then stops its CLI and records
nothing over the settled outcome.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.models import Run, RunStatus

log = logging.getLogger(__name__)


def new_holder(run_id: uuid.UUID) -> str:
    """A delivery's name: the run, this host and process, and a nonce."""
    return f"{run_id}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def take(db: DbSession, run: Run, holder: str, seconds: float) -> None:
    """Give ``run`` (locked, being claimed) to ``holder`` until ``seconds`` from now."""
    run.lease_holder = holder
    run.lease_expires_at = func.now() + timedelta(seconds=seconds)
    run.worker_host = socket.gethostname()[:255]
    run.worker_pid = os.getpid()


def clear(run: Run) -> None:
    run.lease_holder = None
    run.lease_expires_at = None


def expired(db: DbSession, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Running runs whose lease ran out (or that never had one: claimed by an older
    ccq), oldest first, as ``(run_id, session_id)``."""
    rows = db.execute(
        select(Run.id, Run.session_id)
        .where(
            Run.status == RunStatus.RUNNING,
            (Run.lease_expires_at < func.now()) | Run.lease_expires_at.is_(None),
        )
        .order_by(Run.lease_expires_at.asc().nulls_first())
        .limit(limit)
    )
    return [(run_id, session_id) for run_id, session_id in rows]


def is_expired(db: DbSession, run: Run) -> bool:
    """Whether ``run``'s lease has run out by the database's clock."""
    if run.lease_expires_at is None:
        return True
    return bool(db.scalar(select(func.now() >= run.lease_expires_at)))


class RunLease:
    """Renews one delivery's lease from a background thread until stopped."""

    def __init__(
        self,
        session_factory: sessionmaker[DbSession],
        run_id: uuid.UUID,
        holder: str,
        seconds: float,
    ) -> None:
        self._factory = session_factory
        self._run_id = run_id
        self._holder = holder
        self._seconds = seconds
        self._stop = threading.Event()
        # Set when the lease turned out to be someone else's: the run was settled.
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ccq-lease-renew", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease; False if it is no longer this holder's.

        Raises:
            SQLAlchemyError: PostgreSQL did not answer (the lease is not lost for that).
        """
        with self._factory() as db:
            renewed = db.execute(
                update(Run)
                .where(
                    Run.id == self._run_id,
                    Run.lease_holder == self._holder,
                    Run.status == RunStatus.RUNNING,
                )
                .values(lease_expires_at=func.now() + timedelta(seconds=self._seconds))
            )
            db.commit()
            return bool(renewed.rowcount)  # type: ignore[attr-defined]

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                if not self.renew():
                    if self._stop.is_set():
                        return  # its worker recorded the run meanwhile: not lost
                    log.warning("run %s: its lease was taken; stopping its CLI", self._run_id)
                    self.lost.set()
                    return
            except SQLAlchemyError:
                # Retried next tick; the session lock still says the run is live.
                log.warning("run %s: could not renew its lease", self._run_id)

    def stop_renewing(self) -> None:
        """The run is being recorded under its row lock: renewals end, and one under
        way that finds the row recorded does not count the lease as lost."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
