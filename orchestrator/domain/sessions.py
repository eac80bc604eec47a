"""Creating sessions and queueing runs. Callers own the transaction and enqueue after it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.engine import ROW_LOCK, lock_key
from orchestrator.db.models import Fanout, FanoutStatus, Run, RunStatus, Session, SessionStatus
from orchestrator.domain import tree
from orchestrator.errors import ConflictError, ForbiddenError, NotFoundError
from orchestrator.streams.events import (
    RUN_FINISHED,
    SESSION_DELETED,
    PendingEvent,
    next_run_seq,
    run_finished_data,
)


@dataclass(frozen=True)
class NewSession:
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    # Receives a JSON POST whenever one of the session's runs ends.
    notify_url: str | None = None


@dataclass(frozen=True)
class Removal:
    """What a delete leaves for the worker: containers and files of a whole subtree."""

    session_id: uuid.UUID
    # Root first, the deleted session last: where its workspace lies on disk.
    lineage: list[uuid.UUID]
    descendants: list[uuid.UUID]
    running: list[Run]


class SessionService:
    """Sessions and their runs, scoped to one owner and optionally to one session's tree.

    With ``scope`` (a session token's session), only that session and its descendants
    exist for the caller: anything else is :class:`NotFoundError`, as another owner's is.

    Lifecycle events the changes imply collect in ``outbox``; the caller publishes them
    (``events.publish_pending``) after its transaction commits.
    """

    def __init__(self, db: DbSession, owner: str, scope: uuid.UUID | None = None) -> None:
        self.db = db
        self.owner = owner
        self.scope = scope
        self.outbox: list[PendingEvent] = []

    def get(self, session_id: uuid.UUID, *, for_update: bool = False) -> Session:
        """The owner's session, or :class:`NotFoundError` (also for other owners' IDs)."""
        query = select(Session).where(Session.id == session_id, Session.owner == self.owner)
        if for_update:
            query = query.with_for_update(**ROW_LOCK)
        session = self.db.scalars(query).one_or_none()
        if session is None or not self._in_scope(session.id):
            raise NotFoundError(f"session {session_id} not found")
        return session

    def _in_scope(self, session_id: uuid.UUID) -> bool:
        return self.scope is None or tree.is_within(self.db, self.scope, session_id)

    def get_run(self, run_id: uuid.UUID) -> Run:
        run = self.db.scalars(
            select(Run).where(Run.id == run_id, Run.owner == self.owner)
        ).one_or_none()
        if run is None or not self._in_scope(run.session_id):
            raise NotFoundError(f"run {run_id} not found")
        return run

    def require_owner_scope(self, action: str) -> None:
        """Raises ForbiddenError when a session token asks for an owner-wide action."""
        if self.scope is not None:
            raise ForbiddenError(
                f"a session token cannot {action}; it acts only on its own session and "
                "its descendants"
            )

    def create(self, spec: NewSession) -> tuple[Session, bool]:
        """Create a root session; with a known idempotency key, return the earlier one.

        Returns:
            The session and whether it was created now.
        """
        self.require_owner_scope("create root sessions")
        if spec.idempotency_key is not None:
            lock_key(self.db, "session-key", self.owner, spec.idempotency_key)
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
            notify_url=spec.notify_url,
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
        if session.files_deleted_at is not None:
            raise ConflictError(
                f"session {session.id} accepts no prompts: its files were deleted "
                f"{session.files_deleted_at:%Y-%m-%d} after CCQ_WORKSPACE_RETENTION_DAYS idle"
            )
        if session.status == SessionStatus.STOPPED:
            session.status = SessionStatus.IDLE  # a stopped session resumes on its next prompt
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
        self.outbox.append(
            PendingEvent(
                session.id,
                run.id,
                0,
                "ccq.run.queued",
                {"run_seq": run.seq, "prompt_chars": len(prompt)},
            )
        )
        return run, True

    # --- listing ---------------------------------------------------------------------------

    def list_sessions(
        self,
        *,
        status: str | None = None,
        parent_id: uuid.UUID | None = None,
        batch_id: uuid.UUID | None = None,
        limit: int = 50,
        before: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[Session]:
        """The owner's sessions, newest first; ``before`` is the last row of the previous page."""
        self.require_owner_scope("list all sessions")
        query = select(Session).where(Session.owner == self.owner)
        if status is not None:
            query = query.where(Session.status == status)
        if parent_id is not None:
            query = query.where(Session.parent_id == parent_id)
        if batch_id is not None:
            query = query.where(Session.batch_id == batch_id)
        if before is not None:
            created_at, last_id = before
            query = query.where(
                tuple_(Session.created_at, Session.id) < tuple_(created_at, last_id)
            )
        query = query.order_by(Session.created_at.desc(), Session.id.desc()).limit(limit)
        return list(self.db.scalars(query).all())

    def last_runs(self, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, Run]:
        """Each session's newest run, in one query."""
        if not session_ids:
            return {}
        newest = (
            select(Run.session_id, func.max(Run.seq).label("seq"))
            .where(Run.session_id.in_(session_ids))
            .group_by(Run.session_id)
            .subquery()
        )
        rows = self.db.scalars(
            select(Run).join(
                newest, (Run.session_id == newest.c.session_id) & (Run.seq == newest.c.seq)
            )
        ).all()
        return {run.session_id: run for run in rows}

    # --- cancel, stop, delete ------------------------------------------------------------------

    def cancel_run(self, run_id: uuid.UUID) -> tuple[Run, list[Run]]:
        """Cancel a queued run at once, or flag a running one for its executor to kill.

        The session's descendants go with it: their unfinished runs are cancelled and
        their fan-outs (and the session's own) will not resume anyone.

        Returns:
            The run, and the descendants' runs that were running (signal their executors).

        Raises:
            NotFoundError: not the owner's run.
            ConflictError: the run has already finished.
        """
        run = self.get_run(run_id)
        session = self.get(run.session_id, for_update=True)  # lock order: session, then run
        self.db.refresh(run, with_for_update=ROW_LOCK)
        if RunStatus(run.status).is_final:
            raise ConflictError(f"run {run_id} has already finished ({run.status})")
        run.cancel_requested = True
        if run.status == RunStatus.QUEUED:
            self._cancel_queued(run)
        descendants = self._lock_descendants(session.id)
        running = [r for child in descendants for r in self._cancel_pending(child)]
        self._cancel_fanouts([session.id, *(child.id for child in descendants)])
        return run, running

    def _lock_descendants(self, session_id: uuid.UUID) -> list[Session]:
        """The session's descendants, locked, parents before children."""
        ids = tree.descendants(self.db, session_id)
        if not ids:
            return []
        rows = self.db.scalars(
            select(Session).where(Session.id.in_(ids)).with_for_update(**ROW_LOCK)
        ).all()
        by_id = {row.id: row for row in rows}
        return [by_id[i] for i in ids if i in by_id]

    def _cancel_fanouts(self, session_ids: list[uuid.UUID]) -> None:
        """Fan-outs of these sessions still waiting on children will resume nobody."""
        fanouts = self.db.scalars(
            select(Fanout)
            .where(Fanout.session_id.in_(session_ids), Fanout.status == FanoutStatus.RUNNING)
            .with_for_update(**ROW_LOCK)
        ).all()
        for fanout in fanouts:
            fanout.status = FanoutStatus.CANCELLED
            fanout.finished_at = datetime.now(UTC)

    def _cancel_queued(self, run: Run, *, announce: bool = True) -> None:
        run.status = RunStatus.CANCELLED
        run.finished_at = datetime.now(UTC)
        if announce:
            self.outbox.append(
                PendingEvent(
                    run.session_id,
                    run.id,
                    next_run_seq(self.db, run.id),
                    RUN_FINISHED,
                    run_finished_data(run),
                )
            )

    def _cancel_pending(self, session: Session, *, announce: bool = True) -> list[Run]:
        """Cancel every unfinished run of the session; return the ones still running."""
        running = []
        pending = self.db.scalars(
            select(Run)
            .where(
                Run.session_id == session.id, Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING])
            )
            .order_by(Run.seq)
            .with_for_update(**ROW_LOCK)
        ).all()
        for run in pending:
            run.cancel_requested = True
            if run.status == RunStatus.QUEUED:
                self._cancel_queued(run, announce=announce)
            else:
                running.append(run)
        return running

    def stop(self, session_id: uuid.UUID) -> tuple[Session, list[Run], list[uuid.UUID]]:
        """Stop a session and its descendants (resumable): pending runs are cancelled,
        containers stop, fan-outs waiting on children resume nobody.

        Returns:
            The session, the runs that were running (their executors must be signalled)
            and every stopped session's ID (their containers must stop).
        """
        session = self.get(session_id, for_update=True)
        members = [session, *self._lock_descendants(session.id)]
        running: list[Run] = []
        for member in members:
            running += self._cancel_pending(member)
            member.status = SessionStatus.STOPPED
            self.outbox.append(
                PendingEvent(member.id, None, 0, "ccq.session.status", {"status": member.status})
            )
        self._cancel_fanouts([member.id for member in members])
        return session, running, [member.id for member in members]

    def delete(self, session_id: uuid.UUID) -> Removal:
        """Delete a session, its descendants and their history; the caller has the worker
        remove their containers and files (:class:`Removal`)."""
        session = self.get(session_id, for_update=True)
        descendants = self._lock_descendants(session.id)
        running: list[Run] = []
        for member in [session, *descendants]:
            # Their history goes too: no run.finished, only the session's deletion.
            running += self._cancel_pending(member, announce=False)
            self.outbox.append(PendingEvent(member.id, None, 0, SESSION_DELETED, {}))
        removal = Removal(
            session_id=session.id,
            lineage=tree.lineage(self.db, session.id),
            descendants=[child.id for child in descendants],
            running=running,
        )
        self.db.delete(session)  # descendants, runs and events follow by ON DELETE CASCADE
        return removal
