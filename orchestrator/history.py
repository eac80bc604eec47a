"""Event history from PostgreSQL, paged by stream ID (the same cursor live tails use)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from orchestrator.events import WireEvent
from orchestrator.models import Event

_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


class InvalidCursor(ValueError):
    pass


def check_stream_id(value: str) -> str:
    if not _STREAM_ID.match(value):
        raise InvalidCursor("must be an event id like 1700000000000-0")
    return value


def _to_wire(e: Event) -> WireEvent:
    return WireEvent(
        e.stream_id, str(e.session_id), str(e.run_id) if e.run_id else None, e.seq, e.type, e.data
    )


class EventHistory:
    def __init__(self, db: DbSession) -> None:
        self.db = db

    def for_run(self, run_id: uuid.UUID, *, after: str | None, limit: int) -> list[WireEvent]:
        """Events of one run in order; ``after`` is an event ID of that run."""
        query = select(Event).where(Event.run_id == run_id)
        if after is not None:
            # Within a run, seq follows stream order: the cursor becomes a seq bound.
            after_seq = self.db.scalar(
                select(Event.seq).where(
                    Event.run_id == run_id, Event.stream_id == check_stream_id(after)
                )
            )
            if after_seq is None:
                raise InvalidCursor("is not an event of this run")
            query = query.where(Event.seq > after_seq)
        rows = self.db.scalars(query.order_by(Event.seq).limit(limit)).all()
        return [_to_wire(e) for e in rows]
