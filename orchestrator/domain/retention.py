"""Retention: which events, session trees and workspaces are old enough to go.

Pure database logic; the caller owns the transaction and commits after each batch, so
a backlog of millions is worked off in short transactions holding few row locks.
What is live is never touched: events of a queued or running run, and any tree with a
session starting or running, a queued or running run, or recent activity anywhere in it.

Retention works on whole trees, from their root: a child's workspace lies inside its
root's directory and is visible to its parent, and deleting a session deletes its
descendants, so a child goes when its whole tree is old (never on its own).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import aliased

from orchestrator.db.engine import ROW_LOCK
from orchestrator.db.models import Event, Run, RunStatus, Session, SessionStatus
from orchestrator.settings import Settings

LIVE_RUNS = (RunStatus.QUEUED, RunStatus.RUNNING)
ENDED_RUNS = tuple(status for status in RunStatus if status.is_final)
LIVE_SESSIONS = (SessionStatus.STARTING, SessionStatus.RUNNING)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long things are kept, in days (None: for ever), and the batch size."""

    event_days: int | None
    workspace_days: int | None
    stopped_session_days: int | None
    batch_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            event_days=settings.event_retention_days or None,
            workspace_days=settings.workspace_retention_days or None,
            stopped_session_days=settings.stopped_session_retention_days or None,
            batch_size=settings.retention_batch_size,
        )


def cutoff(now: datetime, days: int | None) -> datetime | None:
    """The moment before which things go; None keeps them for ever."""
    return None if days is None else now - timedelta(days=days)


# --- events ----------------------------------------------------------------------------


def purge_events(db: DbSession, before: datetime, limit: int) -> int:
    """Delete at most ``limit`` events of runs that ended before ``before`` (and, with
    what is left of ``limit``, session-level events, which have no run, made before it).

    The runs' rows stay; their history reads empty. A run still queued or running keeps
    every event whatever its age.

    Returns:
        How many events were deleted (``limit``: there may be more).
    """
    of_ended_runs = (
        select(Event.id)
        .join(Run, Run.id == Event.run_id)
        .where(
            Run.status.in_(ENDED_RUNS),
            func.coalesce(Run.finished_at, Run.created_at) < before,
        )
        .limit(limit)
    )
    deleted = _delete_events(db, of_ended_runs)
    if deleted < limit:
        runless = (
            select(Event.id)
            .where(Event.run_id.is_(None), Event.created_at < before)
            .limit(limit - deleted)
        )
        deleted += _delete_events(db, runless)
    return deleted


def _delete_events(db: DbSession, ids: object) -> int:
    result = db.execute(
        delete(Event).where(Event.id.in_(ids)).execution_options(synchronize_session=False)  # type: ignore[arg-type]
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- trees ---------------------------------------------------------------------------


def _activity(session: type[Session] | Session) -> ColumnElement[datetime]:
    return func.coalesce(session.last_active_at, session.created_at)


def _quiet_root(before: datetime) -> ColumnElement[bool]:
    """A root whose whole tree has been inactive since ``before`` and has nothing live:
    no member starting or running, none active since, no run queued or running."""
    member = aliased(Session)
    busy_member = exists().where(
        member.root_id == Session.id,
        or_(_activity(member) >= before, member.status.in_(LIVE_SESSIONS)),
    )
    member_of_run = aliased(Session)
    live_run = exists(
        select(Run.id)
        .join(member_of_run, member_of_run.id == Run.session_id)
        .where(member_of_run.root_id == Session.id, Run.status.in_(LIVE_RUNS))
    )
    return and_(
        Session.parent_id.is_(None),
        _activity(Session) < before,
        Session.status.notin_(LIVE_SESSIONS),
        ~busy_member,
        ~live_run,
    )


def stopped_trees(db: DbSession, before: datetime, limit: int) -> list[uuid.UUID]:
    """Roots of stopped trees quiet since ``before``: deleted like DELETE /sessions/<id>."""
    query = (
        select(Session.id)
        .where(Session.status == SessionStatus.STOPPED, _quiet_root(before))
        .order_by(_activity(Session))
        .limit(limit)
    )
    return list(db.scalars(query))


def trees_with_files(db: DbSession, before: datetime, limit: int) -> list[uuid.UUID]:
    """Roots of trees quiet since ``before`` whose files are still there."""
    query = (
        select(Session.id)
        .where(Session.files_deleted_at.is_(None), _quiet_root(before))
        .order_by(_activity(Session))
        .limit(limit)
    )
    return list(db.scalars(query))


def lock_quiet_tree(db: DbSession, root_id: uuid.UUID, before: datetime) -> list[Session] | None:
    """Lock every session of the tree and check again that it is quiet: the root first
    in the list. None if it is not (a prompt came meanwhile) or is gone.

    A prompt to any member locks that member's row (``SessionService.queue_run``), so
    once this holds the tree's rows no prompt lands until the caller commits.
    """
    members = list(
        db.scalars(
            select(Session)
            .where(Session.root_id == root_id)
            .order_by(Session.depth, Session.id)
            .with_for_update(**ROW_LOCK)
        )
    )
    if not members or members[0].id != root_id:
        return None
    quiet = db.scalar(select(exists().where(Session.id == root_id, _quiet_root(before))))
    return members if quiet else None


def mark_files_deleted(db: DbSession, members: list[Session], now: datetime) -> None:
    """Record that the tree's files are gone (before they go: a prompt that waited on the
    tree's locks is then refused, never run in an empty workspace)."""
    for member in members:
        member.files_deleted_at = now
        member.workspace_bytes = 0
        member.workspace_measured_at = now


# --- workspace sizes -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspacePlace:
    """Where a session's workspace is: root first, then its parent, then itself (enough
    for :class:`~orchestrator.runtime.containers.SessionDirs`' workspace path)."""

    session_id: uuid.UUID
    lineage: tuple[str, ...]


def workspaces_to_measure(db: DbSession, limit: int) -> list[WorkspacePlace]:
    """Sessions with files whose size is unknown or older than their last activity,
    least recently measured first."""
    rows = db.execute(
        select(Session.id, Session.parent_id, Session.root_id)
        .where(
            Session.files_deleted_at.is_(None),
            or_(
                Session.workspace_measured_at.is_(None),
                Session.workspace_measured_at < _activity(Session),
            ),
        )
        .order_by(Session.workspace_measured_at.asc().nulls_first(), Session.created_at)
        .limit(limit)
    ).all()
    places = []
    for session_id, parent_id, root_id in rows:
        if parent_id is None:
            lineage: tuple[str, ...] = (str(session_id),)
        else:
            lineage = (str(root_id or parent_id), str(parent_id), str(session_id))
        places.append(WorkspacePlace(session_id, lineage))
    return places


def record_workspace_sizes(db: DbSession, sizes: Mapping[uuid.UUID, int], now: datetime) -> None:
    """Store measured sizes. ``updated_at`` is left alone: measuring is not a change."""
    for session_id, size in sizes.items():
        db.execute(
            update(Session)
            .where(Session.id == session_id, Session.files_deleted_at.is_(None))
            .values(
                workspace_bytes=size,
                workspace_measured_at=now,
                updated_at=Session.updated_at,
            )
            .execution_options(synchronize_session=False)
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
