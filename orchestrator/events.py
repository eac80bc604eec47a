"""Session event streams: Redis Streams for live tails, PostgreSQL for history.

Every event gets its ID from ``XADD`` (``<ms>-<n>``), which is the cursor clients resume
from; the same ID is stored with the PostgreSQL copy, so a tail can continue from either
without a gap or a duplicate.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy.orm import Session as DbSession

from orchestrator.models import Event

STREAM_MAXLEN = 10_000  # approximate; older entries are served from PostgreSQL
FLUSH_EVERY_EVENTS = 50
FLUSH_EVERY_SECONDS = 0.5


def stream_key(session_id: uuid.UUID | str) -> str:
    return f"ccq:stream:session:{session_id}"


@dataclass(frozen=True)
class WireEvent:
    id: str
    session_id: str
    run_id: str | None
    seq: int
    type: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "run_id": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
        }


def publish(
    client: redis.Redis,
    session_id: uuid.UUID,
    run_id: uuid.UUID | None,
    seq: int,
    type_: str,
    data: dict[str, Any],
) -> WireEvent:
    """Append one event to the session's stream and return it with its stream ID."""
    run = str(run_id) if run_id else None
    payload = {"run_id": run, "seq": seq, "type": type_, "data": data}
    stream_id = client.xadd(
        stream_key(session_id),
        {"e": json.dumps(payload, separators=(",", ":"))},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    return WireEvent(sid, str(session_id), run, seq, type_, data)


class RunEventSink:
    """Publishes a run's events live and persists them to PostgreSQL in batches.

    Used from one thread (the run's executor). ``session_factory`` opens a short
    transaction per flush, so history is durable while the run is still going.
    """

    def __init__(
        self,
        client: redis.Redis,
        persist: Callable[[list[WireEvent]], None],
        session_id: uuid.UUID,
        run_id: uuid.UUID,
        first_seq: int = 0,
    ) -> None:
        self._client = client
        self._persist = persist
        self._session_id = session_id
        self._run_id = run_id
        self._seq = first_seq
        self._pending: list[WireEvent] = []
        self._last_flush = time.monotonic()

    def emit(self, type_: str, data: dict[str, Any]) -> WireEvent:
        event = publish(self._client, self._session_id, self._run_id, self._seq, type_, data)
        self._seq += 1
        self._pending.append(event)
        if len(self._pending) >= FLUSH_EVERY_EVENTS:
            self.flush()
        else:
            self.flush_if_due()
        return event

    def flush_if_due(self) -> None:
        """Flush pending events older than FLUSH_EVERY_SECONDS (called between reads too)."""
        if self._pending and time.monotonic() - self._last_flush >= FLUSH_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._persist(self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def finish(self, db: DbSession, type_: str, data: dict[str, Any]) -> WireEvent:
        """Publish the run's last event and persist everything pending in ``db``'s
        transaction, so the history is complete the moment the run's final state commits."""
        event = publish(self._client, self._session_id, self._run_id, self._seq, type_, data)
        self._seq += 1
        persist_events(db, [*self._pending, event])
        self._pending = []
        return event


def persist_events(db: DbSession, events: list[WireEvent]) -> None:
    db.add_all(
        Event(
            session_id=uuid.UUID(e.session_id),
            run_id=uuid.UUID(e.run_id) if e.run_id else None,
            stream_id=e.id,
            seq=e.seq,
            type=e.type,
            data=e.data,
        )
        for e in events
    )
