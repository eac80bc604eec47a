"""Reading a session's (or one run's) events after a cursor, with no gap and no duplicate.

Redis holds the newest entries of each session stream; PostgreSQL holds all of them a
moment later. A tail reads Redis with blocking ``XREAD`` calls and turns to PostgreSQL
only for what Redis no longer has:

* Trimming removes a stream's oldest entries only (keeping at least ``STREAM_MAXLEN``).
  An ``XREAD`` that returns less than a full batch proves the cursor is among the newest
  entries, so nothing after it was trimmed: the usual live read is one command.
* After a full batch the tail checks that its cursor entry still exists (if it exists
  now, it existed during the read). If not, the events between the cursor and the first
  entry read come from PostgreSQL first. Entries that old were persisted long ago: the
  worker flushes every half second, and a run's events commit with its final state.
* At the start, and on each idle read, a stream that begins after the cursor (expired,
  lost with Redis, or a cursor from history) is filled from PostgreSQL the same way.

The reader keeps nothing but a cursor and one batch, so a slow consumer costs memory for
one batch and Redis keeps the rest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.models import Event
from orchestrator.streams.events import (
    RUN_FINISHED,
    STREAM_MAXLEN,
    WireEvent,
    stream_key,
)
from orchestrator.streams.history import EventHistory
from orchestrator.streams.stream_ids import MAX_ID_PART, format_stream_id, parse_stream_id

Position = tuple[int, int]

# A run's events are never older than the run; starting this much earlier covers clocks
# that differ between the PostgreSQL and Redis hosts. Other runs' events are filtered out.
CLOCK_SKEW_MARGIN_MS = 60_000


@dataclass(frozen=True)
class TailEvent:
    """One event as sent on the wire, with what a tail needs to know without parsing it."""

    id: str
    position: Position
    run_id: str | None
    type: str
    json: str

    @classmethod
    def from_wire(cls, event: WireEvent) -> TailEvent:
        return cls(
            event.id,
            parse_stream_id(event.id),
            event.run_id,
            event.type,
            json.dumps(event.to_json(), separators=(",", ":")),
        )

    @classmethod
    def from_entry(cls, session_id: str, entry_id: str, fields: dict[bytes, bytes]) -> TailEvent:
        payload = fields[b"e"].decode()
        if b"t" in fields:
            run_id, type_ = fields[b"r"].decode() or None, fields[b"t"].decode()
        else:  # an entry written before the plain fields existed
            parsed: dict[str, Any] = json.loads(payload)
            run_id, type_ = parsed.get("run_id"), str(parsed.get("type"))
        # The payload is {"run_id",...,"data"}: prefixing the ID and session gives the wire
        # object without decoding and re-encoding it once per tail.
        wire = f'{{"id":"{entry_id}","session_id":"{session_id}",{payload[1:]}'
        return cls(entry_id, parse_stream_id(entry_id), run_id, type_, wire)

    @property
    def ends_run(self) -> bool:
        return self.type == RUN_FINISHED


class TailTooSlow(Exception):
    """The consumer fell too far behind the newest event; it may resume from ``after``."""

    def __init__(self, after: str, lag_seconds: float) -> None:
        super().__init__(f"{lag_seconds:.0f} s behind the newest event; resume with after={after}")
        self.after = after
        self.lag_seconds = lag_seconds


def position_before(position: Position) -> Position:
    """The greatest stream position that sorts before ``position``."""
    ms, n = position
    return (ms, n - 1) if n > 0 else (ms - 1, MAX_ID_PART)


class EventTail:
    """Batches of a session's events (or one run's) after ``cursor``, forever.

    Iterating yields lists: events in stream order, or an empty list when ``block_seconds``
    passed with nothing new (the caller's chance to check on its client). Events of other
    runs move the cursor without being yielded when the tail is scoped to one run.
    """

    def __init__(
        self,
        client: redis.Redis,
        session_factory: sessionmaker[DbSession],
        session_id: uuid.UUID,
        cursor: Position,
        *,
        run_id: uuid.UUID | None = None,
        batch: int = 200,
        block_seconds: float = 10.0,
        max_lag_seconds: float | None = None,
    ) -> None:
        if batch >= STREAM_MAXLEN:
            # The proof that a short read saw no trimming needs a stream longer than a batch.
            raise ValueError(f"batch must be smaller than the stream cap ({STREAM_MAXLEN})")
        self.client = client
        self.session_factory = session_factory
        self.session_id = session_id
        self.run_id = run_id
        self.cursor = cursor
        self.batch = batch
        self.block_ms = max(1, int(block_seconds * 1000))
        self.max_lag_ms = int(max_lag_seconds * 1000) if max_lag_seconds else None
        self._key = stream_key(session_id)
        self._run = str(run_id) if run_id else None

    @property
    def after(self) -> str:
        """The cursor as an event ID: what a client resumes from."""
        return format_stream_id(self.cursor)

    def __iter__(self) -> Iterator[list[TailEvent]]:
        yield from self._history(before=self._first_entry())
        caught_up = False
        while True:
            cursor = self.after
            reply: Any = self.client.xread(
                {self._key: cursor}, count=self.batch, block=self.block_ms
            )
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
            if not entries:
                caught_up = True
                # Idle: if the stream was lost or expired meanwhile, what it held is in
                # PostgreSQL (cheap, and only once per block interval).
                yield from self._history(before=self._first_entry())
                yield []
                continue
            if len(entries) < self.batch:
                # Fewer than a batch after the cursor: it is among the newest entries,
                # which trimming never reaches. One command per read in the usual case.
                caught_up = True
            else:
                if caught_up:
                    self._check_lag()
                # A full batch may mean the cursor fell out of the stream; if it still
                # exists now it existed during the read, and nothing between was lost.
                if not self.client.xrange(self._key, min=cursor, max=cursor):
                    yield from self._history(before=parse_stream_id(_entry_id(entries[0])))
            yield self._take(entries)

    # --- helpers --------------------------------------------------------------------------

    def _first_entry(self) -> Position | None:
        first = self.client.xrange(self._key, count=1)
        return parse_stream_id(_entry_id(first[0])) if first else None

    def _history(self, *, before: Position | None) -> Iterator[list[TailEvent]]:
        """PostgreSQL pages from the cursor up to ``before`` (exclusive), or to the end."""
        if before is not None and before <= self.cursor:
            return
        while True:
            with self.session_factory() as db:
                history = EventHistory(db)
                if self.run_id is not None:
                    page = history.for_run(
                        self.run_id, after=self.after, before=before, limit=self.batch
                    )
                else:
                    page = history.for_session(
                        self.session_id, after=self.after, before=before, limit=self.batch
                    )
            if not page:
                return
            events = [TailEvent.from_wire(e) for e in page]
            self.cursor = events[-1].position
            yield events
            if len(page) < self.batch:
                return

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[TailEvent]:
        session = str(self.session_id)
        taken = []
        for raw_id, fields in entries:
            event = TailEvent.from_entry(session, raw_id.decode(), fields)
            self.cursor = event.position
            if self._run is None or event.run_id == self._run:
                taken.append(event)
        return taken

    def _check_lag(self) -> None:
        """Raise TailTooSlow when the consumer is more than ``max_lag`` behind the head."""
        if self.max_lag_ms is None:
            return
        last = self.client.xrevrange(self._key, count=1)
        if not last:
            return
        head_ms = parse_stream_id(_entry_id(last[0]))[0]
        lag_ms = head_ms - self.cursor[0]
        if lag_ms > self.max_lag_ms:
            raise TailTooSlow(self.after, lag_ms / 1000)


def _entry_id(entry: Any) -> str:
    """The ID of an (id, fields) stream entry as redis-py returns it (bytes)."""
    raw: bytes = entry[0]
    return raw.decode()


# --- where a tail starts -----------------------------------------------------------------


def live_start(
    client: redis.Redis, session_factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> Position:
    """The newest event of the session: a tail from here sees only what happens next."""
    last = client.xrevrange(stream_key(session_id), count=1)
    if last:
        return parse_stream_id(_entry_id(last[0]))
    with session_factory() as db:
        row = db.execute(
            select(Event.stream_ms, Event.stream_n)
            .where(Event.session_id == session_id)
            .order_by(Event.stream_ms.desc(), Event.stream_n.desc())
            .limit(1)
        ).first()
    return (row[0], row[1]) if row else (0, 0)


def run_start(db: DbSession, run_id: uuid.UUID, created_at: datetime) -> Position:
    """Just before the run's first event (from history, or from when the run was made)."""
    row = db.execute(
        select(Event.stream_ms, Event.stream_n)
        .where(Event.run_id == run_id)
        .order_by(Event.stream_ms, Event.stream_n)
        .limit(1)
    ).first()
    if row is not None:
        return position_before((row[0], row[1]))
    return (max(0, int(created_at.timestamp() * 1000) - CLOCK_SKEW_MARGIN_MS), 0)
