"""Creating sessions and queueing runs. Callers own the transaction and enqueue after it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.models import Run, RunStatus, Session, SessionStatus


@dataclass(frozen=True)
class NewSession:
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


class SessionService:
    """Sessions and their runs, scoped to one owner."""

    def __init__(self, db: DbSession, owner: str) -> None:
        self.db = db
        self.owner = owner

    def get(self, session_id: uuid.UUID, *, for_update: bool = False) -> Session:
        """The owner's session, or :class:`NotFoundError` (also for other owners' IDs)."""
        query = select(Session).where(Session.id == session_id, Session.owner == self.owner)
        if for_update:
            query = query.with_for_update()
        session = self.db.scalars(query).one_or_none()
        if session is None:
            raise NotFoundError(f"session {session_id} not found")
        return session

    def get_run(self, run_id: uuid.UUID) -> Run:
        run = self.db.scalars(
            select(Run).where(Run.id == run_id, Run.owner == self.owner)
        ).one_or_none()
        if run is None:
            raise NotFoundError(f"run {run_id} not found")
        return run

    def create(self, spec: NewSession) -> tuple[Session, bool]:
        """Create a root session; with a known idempotency key, return the earlier one.

        Returns:
            The session and whether it was created now.
        """
        if spec.idempotency_key is not None:
            existing = self.db.scalars(
                select(Session).where(
                    Session.owner == self.owner, Session.idempotency_key == spec.idempotency_key
                )
            ).one_or_none()
            if existing is not None:
                return existing, False
        session = Session(
            id=uuid.uuid4(),
            owner=self.owner,
            status=SessionStatus.IDLE,
            model=spec.model,
            options=spec.options,
            meta=spec.metadata,
            idempotency_key=spec.idempotency_key,
        )
        session.root_id = session.id
        self.db.add(session)
        self.db.flush()
        return session, True

    def queue_run(
        self,
        session_id: uuid.UUID,
        prompt: str,
        *,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Run, bool]:
        """Accept a prompt as the session's next run (its ``seq`` fixes the order).

        Returns:
            The run and whether it was created now (False for a repeated idempotency key).

        Raises:
            NotFoundError: the session is not the owner's.
        """
        # The row lock serialises concurrent prompts to one session: seq stays gapless.
        session = self.get(session_id, for_update=True)
        if idempotency_key is not None:
            existing = self.db.scalars(
                select(Run).where(
                    Run.session_id == session.id, Run.idempotency_key == idempotency_key
                )
            ).one_or_none()
            if existing is not None:
                return existing, False
        if session.status == SessionStatus.FAILED:
            raise ConflictError(f"session {session.id} has failed and accepts no prompts")
        last_seq = self.db.scalar(select(func.max(Run.seq)).where(Run.session_id == session.id))
        run = Run(
            id=uuid.uuid4(),
            session_id=session.id,
            owner=self.owner,
            seq=(last_seq or 0) + 1,
            prompt=prompt,
            options=options or {},
            status=RunStatus.QUEUED,
            idempotency_key=idempotency_key,
        )
        session.runs_count += 1
        session.last_active_at = datetime.now(UTC)
        self.db.add(run)
        self.db.flush()
        return run, True
