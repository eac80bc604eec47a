"""Batch progress events: one Redis stream per batch, read by ``WS /batches/<id>/stream``.

Producers: the worker when an item's run starts and when it ends (just before the end
commits, so the batch's last event can never come before it), the API when a batch is
cancelled, and whoever closes the batch (``ccq.batch.finished``, last).

Every event carries the batch's whole state as it was published (counts by state, cost,
progress, ETA) and the item that changed. A client renders the newest event, so a missed
or repeated event costs nothing, and a reader that lost its place (the stream expired or
was lost with Redis) is put right by a snapshot from PostgreSQL, which holds the truth.

Publishing never fails the caller: progress is a view, and the run or the batch it
describes is already committed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.models import Batch, Run, Session
from orchestrator.domain import batches
from orchestrator.domain.batches import MAX_ITEMS
from orchestrator.streams.stream_ids import format_stream_id, parse_stream_id

log = logging.getLogger(__name__)

BATCH_PROGRESS = "ccq.batch.progress"
BATCH_FINISHED = "ccq.batch.finished"
# Two events per item (start and end), a cancel and the end: the largest batch fits whole.
STREAM_MAXLEN = 2 * MAX_ITEMS + 100
READ_COUNT = 500
# A finished batch whose last event never arrived (Redis lost it) is ended this long
# after PostgreSQL says it finished, from PostgreSQL.
FINISHED_GRACE = timedelta(seconds=5)

Position = tuple[int, int]


def stream_key(batch_id: uuid.UUID | str) -> str:
    return f"ccq:stream:batch:{batch_id}"


@dataclass(frozen=True)
class BatchEvent:
    """One message of a batch stream. ``id`` is None for a snapshot (not a stream entry:
    a client resumes from the stream ID before it)."""

    id: str | None
    batch_id: str
    type: str
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.type == BATCH_FINISHED

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "batch_id": self.batch_id, "type": self.type, "data": self.data},
            separators=(",", ":"),
        )


def state(db: DbSession, batch: Batch, item: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event's data: the batch as the API shows it, and the item that changed."""
    return {"batch": batches.batch_view(batch, batches.progress(db, batch.id)), "item": item}


def item_json(db: DbSession, run_id: uuid.UUID) -> tuple[uuid.UUID, dict[str, Any]] | None:
    """The batch a run belongs to and the run as a batch item; None outside batches."""
    row = db.execute(
        select(Session.batch_id, Session.batch_index, Session.id, Run.status, Run.total_cost_usd)
        .join(Run, Run.session_id == Session.id)
        .where(Run.id == run_id, Session.batch_id.is_not(None))
    ).one_or_none()
    if row is None:
        return None
    batch_id, index, session_id, status, cost = row
    assert batch_id is not None  # the query's filter
    return batch_id, {
        "index": index,
        "session_id": str(session_id),
        "run_id": str(run_id),
        "status": status,
        "total_cost_usd": float(cost) if cost is not None else None,
    }


def publish(
    client: redis.Redis, batch_id: uuid.UUID, type_: str, data: dict[str, Any], ttl: int
) -> str:
    """Append one event to the batch's stream; the stream lives ``ttl`` after its last."""
    payload = json.dumps(data, separators=(",", ":"))
    key = stream_key(batch_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"t": type_, "e": payload}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, ttl)
    entry_id, _ = pipe.execute()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def publish_item(client: redis.Redis, db: DbSession, run_id: uuid.UUID, ttl: int) -> None:
    """``ccq.batch.progress`` for a batch item's run that started (no-op for a run outside
    batches). Never raises."""
    try:
        found = item_json(db, run_id)
        if found is None:
            return
        batch_id, item = found
        batch = db.get(Batch, batch_id)
        if batch is None:
            return
        data = state(db, batch, item)
        publish(client, batch_id, BATCH_PROGRESS, data, ttl)
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("batch progress of run %s not published: %s", run_id, exc)


def publish_item_end(
    db: DbSession, client: redis.Redis, batch_id: uuid.UUID, run: Run, ttl: int
) -> None:
    """``ccq.batch.progress`` for an item whose run is ending, from inside the transaction
    that records it (its counts include the run's own uncommitted end).

    Published before that commit, so it always precedes the batch's last event: closing
    needs every item ended, which nobody sees before the commit. A Redis failure is only
    logged; a PostgreSQL one is the recording transaction's own and is raised.
    """
    found = item_json(db, run.id)
    batch = db.get(Batch, batch_id)
    if found is None or batch is None:
        return
    data = state(db, batch, found[1])
    try:
        publish(client, batch_id, BATCH_PROGRESS, data, ttl)
    except redis.RedisError as exc:
        log.warning("batch progress of run %s not published: %s", run.id, exc)


def publish_batch(
    client: redis.Redis, db: DbSession, batch_id: uuid.UUID, type_: str, ttl: int
) -> None:
    """The batch's state as an event of ``type_`` (after a cancel, or its end), read from
    ``db``: call it once the change it reports has committed. Never raises."""
    try:
        batch = db.get(Batch, batch_id)
        if batch is None:
            return
        data = state(db, batch)
        publish(client, batch_id, type_, data, ttl)
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("batch %s event %s not published: %s", batch_id, type_, exc)


class BatchFeed:
    """A batch's events after a cursor, for one reader, until the batch's last event.

    Without a cursor (or when the stream no longer holds the cursor's neighbourhood), the
    first event is a snapshot of the batch from PostgreSQL, typed ``ccq.batch.finished``
    if the batch has finished. Iterating yields lists of events, or an empty list after
    ``block_seconds`` with nothing new (the caller's chance to check on its client).
    """

    def __init__(
        self,
        client: redis.Redis,
        session_factory: sessionmaker[DbSession],
        batch_id: uuid.UUID,
        after: Position | None,
        *,
        block_seconds: float,
    ) -> None:
        self.client = client
        self.session_factory = session_factory
        self.batch_id = batch_id
        self.key = stream_key(batch_id)
        self.block_ms = max(1, int(block_seconds * 1000))
        self.needs_snapshot = after is None or self._lost(after)
        self.cursor: Position = self._last_position() if self.needs_snapshot else after  # type: ignore[assignment]

    @property
    def after(self) -> str:
        """Where a reader resumes: the last stream entry handed on (or before the snapshot)."""
        return format_stream_id(self.cursor)

    def _last_position(self) -> Position:
        newest: Any = self.client.xrevrange(self.key, count=1)
        return parse_stream_id(_text(newest[0][0])) if newest else (0, 0)

    def _lost(self, after: Position) -> bool:
        """Whether entries after ``after`` may be gone: the stream is missing, or starts
        past ``after`` without ``after`` being its own first entry's predecessor."""
        if after == (0, 0):
            return not self.client.exists(self.key)
        oldest: Any = self.client.xrange(self.key, count=1)
        if not oldest:
            return True
        return parse_stream_id(_text(oldest[0][0])) > after and not self.client.xrange(
            self.key, min=format_stream_id(after), max=format_stream_id(after), count=1
        )

    def snapshot(self) -> BatchEvent | None:
        """The batch as PostgreSQL has it now; None if it was deleted."""
        with self.session_factory() as db:
            batch = db.get(Batch, self.batch_id)
            if batch is None:
                return None
            type_ = BATCH_FINISHED if batch.finished_at is not None else BATCH_PROGRESS
            return BatchEvent(None, str(self.batch_id), type_, state(db, batch))

    def __iter__(self) -> Iterator[list[BatchEvent]]:
        if self.needs_snapshot:
            first = self.snapshot()
            yield [first] if first is not None else []
        while True:
            replies: Any = self.client.xread(
                {self.key: self.after}, count=READ_COUNT, block=self.block_ms
            )
            events = [
                self._event(entry_id, fields)
                for _, entries in replies
                for entry_id, fields in entries
            ]
            if events:
                self.cursor = parse_stream_id(events[-1].id or self.after)
                yield events
                continue
            overdue = self._finished_long_ago()
            yield [overdue] if overdue is not None else []

    def _event(self, entry_id: bytes | str, fields: dict[bytes, bytes]) -> BatchEvent:
        data = json.loads(fields[b"e"])
        return BatchEvent(_text(entry_id), str(self.batch_id), fields[b"t"].decode(), data)

    def _finished_long_ago(self) -> BatchEvent | None:
        """The final snapshot of a batch that finished with no final event on the stream."""
        with self.session_factory() as db:
            finished = db.scalar(select(Batch.finished_at).where(Batch.id == self.batch_id))
        if finished is None or datetime.now(UTC) - finished < FINISHED_GRACE:
            return None
        return self.snapshot()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
