"""Ending a run that no CLI will finish: cancelled while queued, or lost with its worker."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session as DbSession

from orchestrator.auth import session_tokens
from orchestrator.db.models import Run, RunStatus, Session, SessionStatus
from orchestrator.streams.events import RUN_FINISHED, PendingEvent, next_run_seq, run_finished_data

# ``run.error_code`` of a run whose worker died under it.
WORKER_LOST = "worker_lost"


def finish_without_cli(
    db: DbSession,
    run: Run,
    session: Session,
    status: RunStatus,
    error: str | None,
    outbox: list[PendingEvent],
    *,
    error_code: str | None = None,
) -> None:
    """Make ``run`` (row-locked, with its session) final; its ``ccq.run.finished`` goes
    into ``outbox``, to be published once the transaction commits."""
    run.status = status
    run.error = error
    run.error_code = error_code
    run.finished_at = datetime.now(UTC)
    run.lease_holder = None
    run.lease_expires_at = None
    session_tokens.revoke_run(db, run.id)
    if session.status != SessionStatus.STOPPED:
        session.status = SessionStatus.IDLE
    session.last_active_at = run.finished_at
    outbox.append(
        PendingEvent(
            session.id, run.id, next_run_seq(db, run.id), RUN_FINISHED, run_finished_data(run)
        )
    )
