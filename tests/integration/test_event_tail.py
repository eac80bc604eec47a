"""The tail reader against real Redis and PostgreSQL: trimming, lost streams, lag.

Events here are appended the way the worker appends them (``publish`` to the stream,
``persist_events`` to PostgreSQL) without running the CLI, so the tests can trim and
delete streams at exact points.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db import engine as db
from orchestrator.db.engine import ROW_LOCK, session_scope
from orchestrator.domain.sessions import NewSession, SessionService
from orchestrator.settings import Settings
from orchestrator.streams.events import WireEvent, persist_events, publish, stream_key
from orchestrator.streams.tail import EventTail, TailEvent, TailTooSlow, live_start

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """The stack's Redis, not flushed: these tests use streams of their own sessions only,
    and the session's worker keeps its broker queue and heartbeat in the same database."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = db.make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[DbSession]:
    return db.make_session_factory(engine)


@pytest.fixture
def session_id(factory: sessionmaker[DbSession]) -> uuid.UUID:
    with session_scope(factory) as dbs:
        session, _ = SessionService(dbs, "alice").create(NewSession())
        return session.id


def _append(
    client: redis.Redis,
    factory: sessionmaker[DbSession],
    session_id: uuid.UUID,
    count: int,
    *,
    run_id: uuid.UUID | None = None,
    first_seq: int = 0,
) -> list[WireEvent]:
    events = [
        publish(client, session_id, run_id, first_seq + i, "test.tick", {"i": first_seq + i})
        for i in range(count)
    ]
    with session_scope(factory) as dbs:
        persist_events(dbs, events)
    return events


def _drain(tail: EventTail, until: str) -> list[TailEvent]:
    """Read batches until the event with ID ``until``; fail on an idle batch first."""
    received: list[TailEvent] = []
    for batch in tail:
        assert batch, f"the tail went idle before {until}"
        received.extend(batch)
        if received[-1].id == until:
            return received
    raise AssertionError("unreachable: a tail never ends by itself")


def test_a_trimmed_stream_is_filled_from_postgresql_without_gap_or_duplicate(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    events = _append(redis_client, factory, session_id, 120)
    redis_client.xtrim(
        stream_key(session_id), maxlen=30, approximate=False
    )  # exact: the oldest 90 are gone
    assert redis_client.xlen(stream_key(session_id)) == 30

    tail = EventTail(redis_client, factory, session_id, (0, 0), batch=25, block_seconds=0.2)
    received = _drain(tail, events[-1].id)

    assert [e.id for e in received] == [e.id for e in events]
    assert [e.json for e in received[:3]] == [TailEvent.from_wire(e).json for e in events[:3]]


def test_the_cursor_trimmed_between_two_reads_is_bridged_from_postgresql(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    events = _append(redis_client, factory, session_id, 40)
    tail = EventTail(redis_client, factory, session_id, (0, 0), batch=10, block_seconds=0.2)
    batches = iter(tail)
    first = next(batches)  # events 0..9 from Redis
    more = _append(redis_client, factory, session_id, 40, first_seq=40)
    # The cursor (event 9) is gone; like Redis' own trimming (STREAM_MAXLEN), this keeps
    # more entries than a batch.
    redis_client.xtrim(stream_key(session_id), maxlen=20, approximate=False)

    received = list(first)
    for batch in batches:
        assert batch, "the tail went idle"
        received.extend(batch)
        if received[-1].id == more[-1].id:
            break
    assert [e.id for e in received] == [e.id for e in events + more]


def test_a_lost_stream_is_read_from_postgresql_and_new_events_follow_live(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    old = _append(redis_client, factory, session_id, 15)
    redis_client.delete(stream_key(session_id))
    tail = EventTail(redis_client, factory, session_id, (0, 0), batch=10, block_seconds=0.2)
    batches = iter(tail)
    from_history = next(batches) + next(batches)
    assert [e.id for e in from_history] == [e.id for e in old]
    assert next(batches) == []  # nothing new yet: an idle tick

    new = _append(redis_client, factory, session_id, 3, first_seq=15)
    assert [e.id for e in next(batches)] == [e.id for e in new]


def test_a_run_tail_skips_other_runs_events(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    with session_scope(factory) as dbs:
        service = SessionService(dbs, "alice")
        mine, _ = service.queue_run(session_id, "mine")
        other, _ = service.queue_run(session_id, "other")
    _append(redis_client, factory, session_id, 5, run_id=other.id)
    expected = _append(redis_client, factory, session_id, 5, run_id=mine.id)
    _append(redis_client, factory, session_id, 5, run_id=other.id)

    tail = EventTail(
        redis_client, factory, session_id, (0, 0), run_id=mine.id, batch=100, block_seconds=0.2
    )
    received = next(iter(tail))

    assert [e.id for e in received] == [e.id for e in expected]
    assert {e.run_id for e in received} == {str(mine.id)}


def test_a_live_start_sees_only_what_comes_next(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    _append(redis_client, factory, session_id, 5)
    start = live_start(redis_client, factory, session_id)
    tail = EventTail(redis_client, factory, session_id, start, block_seconds=0.2)
    batches = iter(tail)
    assert next(batches) == []
    new = _append(redis_client, factory, session_id, 2, first_seq=5)
    assert [e.id for e in next(batches)] == [e.id for e in new]


def _tick(client: redis.Redis, session_id: uuid.UUID, ms: int, n: int = 0) -> None:
    """An entry with an explicit ID, so lags are known without waiting for the clock."""
    client.xadd(
        stream_key(session_id), {"r": "", "t": "test.tick", "e": '{"seq":0}'}, id=f"{ms}-{n}"
    )


def test_a_live_consumer_far_behind_the_newest_event_is_told_where_to_resume(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    _tick(redis_client, session_id, 1_000_000)
    tail = EventTail(
        redis_client,
        factory,
        session_id,
        (1_000_000, 0),
        batch=2,
        block_seconds=0.2,
        max_lag_seconds=60,
    )
    batches = iter(tail)
    assert next(batches) == []  # caught up with the head
    _tick(redis_client, session_id, 1_000_001)
    assert [e.id for e in next(batches)] == ["1000001-0"]
    for n in range(3):  # an hour later, more than one batch at once
        _tick(redis_client, session_id, 3_601_000_000, n)

    with pytest.raises(TailTooSlow) as behind:
        next(batches)
    assert behind.value.after == "1000001-0"
    assert behind.value.lag_seconds > 3000


def test_replaying_history_far_behind_is_not_too_slow(
    redis_client: redis.Redis, factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    """Reading from an old cursor is a replay, not lag: only a live consumer can fall behind."""
    for n, ms in enumerate((1_000_000, 1_000_001, 3_601_000_000, 3_601_000_001)):
        _tick(redis_client, session_id, ms, n)
    tail = EventTail(
        redis_client, factory, session_id, (0, 0), batch=2, block_seconds=0.2, max_lag_seconds=60
    )
    batches = iter(tail)
    received = next(batches) + next(batches)
    assert [e.id for e in received] == ["1000000-0", "1000001-1", "3601000000-2", "3601000001-3"]


def test_storing_an_event_never_waits_for_a_lock_on_its_session_or_run(
    factory: sessionmaker[DbSession], session_id: uuid.UUID
) -> None:
    """Claims and cancels lock the rows they update; an event insert only key-shares them.

    With plain FOR UPDATE the two conflict, and an event insert racing a run claim
    deadlocked (seen in CI); FOR NO KEY UPDATE lets the insert through at once.
    """
    with session_scope(factory) as dbs:
        run, _ = SessionService(dbs, "alice").queue_run(session_id, "locked")
        run_id = run.id
    with factory() as locker:
        service = SessionService(locker, "alice")
        service.get(session_id, for_update=True)  # as queue_run, cancel and claims do
        locker.refresh(service.get_run(run_id), with_for_update=ROW_LOCK)
        with session_scope(factory) as writer:
            writer.execute(text("SET LOCAL lock_timeout = '2s'"))  # fail, do not hang
            event = WireEvent("1-0", str(session_id), str(run_id), 9, "test.tick", {})
            persist_events(writer, [event])
        locker.rollback()
