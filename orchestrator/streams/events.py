"""Session event streams: Redis Streams for live tails, PostgreSQL for history.

Every event gets its ID from ``XADD`` (``<ms>-<n>``), which is the cursor clients resume
from; the same ID is stored with the PostgreSQL copy, so a tail can continue from either
without a gap or a duplicate.

Producers: the worker's run executor (CLI output and a run's start and end) and the API
(a run queued, a queued run cancelled, a session stopped or deleted), which publishes only
after its transaction commits, so no tail ever sees an event of a change that rolled back.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import Event, Run
from orchestrator.storable import storable_json, storable_text
from orchestrator.streams.stream_ids import parse_stream_id

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000  # approximate; older entries are served from PostgreSQL
# Every write to a stream sets its expiry (CCQ_EVENT_STREAM_TTL where the caller has the
# settings; this, its default, otherwise): no stream outlives its last event by more.
DEFAULT_STREAM_TTL_SECONDS = 86_400
FLUSH_EVERY_EVENTS = 50
FLUSH_EVERY_SECONDS = 0.5
# Events a run holds while PostgreSQL is unreachable (its tail still gets them live);
# past this the run ends, saying why.
MAX_UNSTORED_EVENTS = 20_000
# How long a sink that found PostgreSQL unreachable waits before trying again.
STORE_RETRY_SECONDS = 2.0


# How long a run's sink waits for Redis before the run ends, saying why.
REDIS_PATIENCE_SECONDS = 60.0


class StreamUnavailable(Exception):
    """Redis stayed unreachable: the run cannot stream, and ends with this as its error."""


class StoreUnavailable(Exception):
    """PostgreSQL is unreachable: the sink keeps the events and tries again later."""


class EventsNotStored(Exception):
    """A run's events cannot be stored: the run ends with this as its error."""


# How long a deleted session's stream stays, so its tails learn of the deletion.
DELETED_STREAM_TTL_SECONDS = 60

RUN_FINISHED = "ccq.run.finished"
SESSION_DELETED = "ccq.session.deleted"


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
    ttl: int = DEFAULT_STREAM_TTL_SECONDS,
) -> WireEvent:
    """Append one event to the session's stream and return it with its stream ID.

    The stream's expiry is set to ``ttl`` seconds in the same round trip (one pipeline),
    so a stream whose last writer was the API (a queued or cancelled run, a stop) still
    expires; its history stays in PostgreSQL.

    Besides the JSON payload (``e``) the entry carries the run (``r``) and type (``t``)
    as plain fields, so a tail filters and ends run streams without parsing JSON.

    Every event passes here, whoever made it (the CLI's output above all), and both its
    copies (this stream entry, and the PostgreSQL row made from the returned event) carry
    the data made storable: a NUL or a lone surrogate becomes U+FFFD, so a tail and the
    history agree and no insert fails (:mod:`orchestrator.storable`).
    """
    type_, data = storable_text(type_), storable_json(data)
    run = str(run_id) if run_id else None
    payload = {"run_id": run, "seq": seq, "type": type_, "data": data}
    key = stream_key(session_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(
        key,
        {"r": run or "", "t": type_, "e": json.dumps(payload, separators=(",", ":"))},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    pipe.expire(key, ttl)
    stream_id = pipe.execute()[0]
    sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
    return WireEvent(sid, str(session_id), run, seq, type_, data)


def run_finished_data(run: Run) -> dict[str, Any]:
    """The ``ccq.run.finished`` payload: how the run ended, in the run's own words."""
    return {
        "status": run.status,
        "result": run.result_text,
        "is_error": run.is_error,
        "error": run.error,
        "error_code": run.error_code,
        "total_cost_usd": float(run.total_cost_usd or 0),
        "metered_cost_usd": float(run.metered_cost_usd or 0),
        "num_turns": run.num_turns,
    }


@dataclass(frozen=True)
class PendingEvent:
    """A lifecycle event decided inside a transaction, published once it commits."""

    session_id: uuid.UUID
    run_id: uuid.UUID | None
    seq: int
    type: str
    data: dict[str, Any]


def next_run_seq(db: DbSession, run_id: uuid.UUID) -> int:
    last = db.scalar(select(func.max(Event.seq)).where(Event.run_id == run_id))
    return 0 if last is None else last + 1


def store_unstored(
    client: redis.Redis, db: DbSession, session_id: uuid.UUID, run_id: uuid.UUID
) -> int:
    """Add to ``db`` the run's events its stream has and PostgreSQL has not; how many.

    A worker publishes each event at once and stores them every half second: one that
    died leaves its last few in Redis only, where live tails saw them. Whoever settles
    its run stores them first, so the history is what the tails saw.

    Raises:
        redis.RedisError: the stream could not be read.
    """
    last = db.execute(
        select(Event.seq, Event.stream_id)
        .where(Event.run_id == run_id)
        .order_by(Event.seq.desc())
        .limit(1)
    ).first()
    after = f"({last.stream_id}" if last is not None else "-"
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        client.xrange(stream_key(session_id), min=after, max="+"),
    )
    missing = []
    for stream_id, fields in entries:
        payload = json.loads(fields[b"e"])
        if payload.get("run_id") != str(run_id):
            continue
        if last is not None and payload["seq"] <= last.seq:
            continue
        missing.append(
            WireEvent(
                stream_id.decode(),
                str(session_id),
                str(run_id),
                payload["seq"],
                payload["type"],
                payload["data"],
            )
        )
    persist_events(db, missing)
    return len(missing)


def publish_pending(
    client: redis.Redis,
    db: DbSession,
    pending: Iterable[PendingEvent],
    ttl: int = DEFAULT_STREAM_TTL_SECONDS,
) -> list[WireEvent]:
    """Publish committed lifecycle events, then add them to ``db`` with their stream IDs.

    An after-commit step: the caller's unit of work commits what this adds. Events of a
    session deleted meanwhile are dropped (inside a savepoint, so the rest stands).
    """
    events = [publish(client, p.session_id, p.run_id, p.seq, p.type, p.data, ttl) for p in pending]
    for event in events:
        if event.type == SESSION_DELETED:
            client.expire(stream_key(event.session_id), DELETED_STREAM_TTL_SECONDS)
    durable = [e for e in events if e.type != SESSION_DELETED]  # its rows are gone
    if durable:
        try:
            with db.begin_nested():
                persist_events(db, durable)
        except IntegrityError:
            log.info("dropped %d events of a session deleted meanwhile", len(durable))
    return events


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
        stream_ttl: int | None = None,
    ) -> None:
        self._client = client
        self._stream_ttl = stream_ttl
        self._persist = persist
        self._session_id = session_id
        self._run_id = run_id
        self._seq = first_seq
        self._pending: list[WireEvent] = []
        self._last_flush = time.monotonic()
        self._store_down_until = 0.0

    def emit(self, type_: str, data: dict[str, Any]) -> WireEvent:
        event = self._publish(type_, data)
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
        """Store the pending events; during an outage keep them (up to a bound) for the
        next flush.

        Raises:
            EventsNotStored: they cannot be stored, or the outage outgrew the bound.
        """
        now = self._last_flush = time.monotonic()
        if not self._pending or now < self._store_down_until:
            return
        try:
            self._persist(self._pending)
        except StoreUnavailable as exc:
            if len(self._pending) > MAX_UNSTORED_EVENTS:
                raise EventsNotStored(
                    f"PostgreSQL was unreachable for {len(self._pending)} events: {exc}"
                ) from exc
            self._store_down_until = now + STORE_RETRY_SECONDS
            log.warning("run %s: %d events wait for PostgreSQL", self._run_id, len(self._pending))
            return
        self._store_down_until = 0.0
        self._pending = []

    def persist_pending(self, db: DbSession) -> None:
        """Add everything not yet persisted to ``db``'s transaction (the run's final one);
        call :meth:`stored` once it commits (a failed commit can be tried again)."""
        persist_events(db, self._pending)

    def stored(self) -> None:
        """The transaction :meth:`persist_pending` added to has committed."""
        self._pending = []

    def discard_unstored(self) -> int:
        """Give up the events not yet stored (they cannot be: :class:`EventsNotStored`);
        how many. Their live copies were published."""
        count, self._pending = len(self._pending), []
        return count

    def finish(self, type_: str, data: dict[str, Any]) -> WireEvent:
        """Publish the run's last event, after its final state has committed.

        A client that sees it can rely on the run's row and earlier history being final;
        the event's own PostgreSQL copy follows at once.
        """
        try:
            event = self._publish(type_, data)
        except StreamUnavailable:
            # Redis stayed away: the run's history still ends with it. Its ID follows
            # the session's earlier ones (they come from the same clock, give or take
            # Redis's); live tails learn of the end from the history.
            log.error("run %s: its last event is stored without a stream entry", self._run_id)
            stream_id = f"{time.time_ns() // 1_000_000}-{self._seq}"
            event = WireEvent(
                stream_id, str(self._session_id), str(self._run_id), self._seq, type_, data
            )
        self._seq += 1
        self._persist([event])
        return event

    def _publish(self, type_: str, data: dict[str, Any]) -> WireEvent:
        """Publish the next event, waiting out a Redis outage of up to
        ``REDIS_PATIENCE_SECONDS`` (the CLI's output waits in its pipe meanwhile).

        Raises:
            StreamUnavailable: Redis stayed away longer.
        """
        # Each event renews the stream's expiry: an idle session's stream goes, its
        # history stays in PostgreSQL.
        ttl = self._stream_ttl or DEFAULT_STREAM_TTL_SECONDS
        deadline: float | None = None
        delay = 0.2
        while True:
            try:
                if deadline is not None and (found := self._published_already()) is not None:
                    return found  # the failed attempt's write had landed
                return publish(
                    self._client, self._session_id, self._run_id, self._seq, type_, data, ttl
                )
            except redis.RedisError as exc:
                now = time.monotonic()
                deadline = deadline or now + REDIS_PATIENCE_SECONDS
                if now >= deadline:
                    raise StreamUnavailable(
                        f"Redis was unreachable for {REDIS_PATIENCE_SECONDS:.0f} s: {exc}"
                    ) from exc
                log.warning("run %s: Redis unreachable, publishing again", self._run_id)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _published_already(self) -> WireEvent | None:
        """This sink's next event, if the stream's newest entry is it."""
        newest = self._client.xrevrange(stream_key(self._session_id), count=1)
        if not newest:
            return None
        stream_id, fields = newest[0]
        if not fields:
            return None
        payload = json.loads(fields[b"e"])
        if payload.get("run_id") != str(self._run_id) or payload.get("seq") != self._seq:
            return None
        sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
        run = payload["run_id"]
        return WireEvent(
            sid, str(self._session_id), run, self._seq, payload["type"], payload["data"]
        )


def persist_events(db: DbSession, events: list[WireEvent]) -> None:
    db.add_all(
        Event(
            session_id=uuid.UUID(e.session_id),
            run_id=uuid.UUID(e.run_id) if e.run_id else None,
            stream_id=e.id,
            stream_ms=parse_stream_id(e.id)[0],
            stream_n=parse_stream_id(e.id)[1],
            seq=e.seq,
            type=e.type,
            data=e.data,
        )
        for e in events
    )
