"""Event history from PostgreSQL, in stream order, paged by event ID (the tails' cursor)."""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import Event
from orchestrator.streams.events import WireEvent
from orchestrator.streams.stream_ids import InvalidCursor, parse_stream_id

__all__ = ["EventHistory", "InvalidCursor"]


def _to_wire(e: Event) -> WireEvent:
    return WireEvent(
        e.stream_id, str(e.session_id), str(e.run_id) if e.run_id else None, e.seq, e.type, e.data
    )


def _position() -> ColumnElement[tuple[int, int]]:
    return tuple_(Event.stream_ms, Event.stream_n)


class EventHistory:
    def __init__(self, db: DbSession) -> None:
        self.db = db

    def for_session(
        self,
        session_id: uuid.UUID,
        *,
        after: str | None = None,
        before: tuple[int, int] | None = None,
        limit: int,
    ) -> list[WireEvent]:
        """The session's events after ``after`` (an event ID) and before ``before``."""
        return self._page(Event.session_id == session_id, after, before, limit)

    def for_run(
        self,
        run_id: uuid.UUID,
        *,
        after: str | None = None,
        before: tuple[int, int] | None = None,
        limit: int,
    ) -> list[WireEvent]:
        """One run's events; ``after`` may be any event ID, of this run or not."""
        return self._page(Event.run_id == run_id, after, before, limit)

    def _page(
        self,
        scope: ColumnElement[bool],
        after: str | None,
        before: tuple[int, int] | None,
        limit: int,
    ) -> list[WireEvent]:
        query = select(Event).where(scope)
        if after is not None:
            query = query.where(_position() > tuple_(*parse_stream_id(after)))
        if before is not None:
            query = query.where(_position() < tuple_(*before))
        rows = self.db.scalars(query.order_by(Event.stream_ms, Event.stream_n).limit(limit)).all()
        return [_to_wire(e) for e in rows]
