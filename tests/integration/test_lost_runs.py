"""Runs whose worker dies under them: leases, the lost-run rule and beat's reconciler.

The wedge this guards against: a run's pool process was SIGKILLed mid-stream, Celery
redelivered its task at once, the redelivery found the dead holder's lock still alive
and was acked, and the run stayed ``running`` for good, its session's next prompt
queued behind it forever.
"""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.extensions import Services
from model_server.server import ModelServer
from orchestrator.db.models import Event, Run
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.run_lifecycle import RunListeners
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.locks import SessionLock
from orchestrator.runtime.lost_runs import LostRuns
from orchestrator.runtime.reconciler import Reconciler
from orchestrator.settings import Settings
from tests.api_helpers import (
    auth,
    create_session,
    get_json,
    post_json,
    queue_run,
    start_streaming_run,
    wait_run,
)
from tests.processes import WorkerProcess
from tests.run_records import prompt_calls, streamed
from tests.waiting import wait_for


def _run_row(db_factory: sessionmaker[DbSession], run_id: str) -> Run:
    with db_factory() as db:
        run = db.get(Run, uuid.UUID(run_id))
        assert run is not None
        return run


def _streaming_session(
    client: FlaskClient, headers: dict[str, str], nonce: str, **options: Any
) -> tuple[str, str]:
    return start_streaming_run(client, headers, f"{nonce} [[stream 80 0.25]]", **options)


def test_a_run_whose_pool_process_is_killed_fails_worker_lost_and_the_session_goes_on(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    runtime: ContainerRuntime,
    model: ModelServer,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    nonce = f"lost-{uuid.uuid4().hex[:8]}"
    session_id, run_id = _streaming_session(client, headers, nonce)
    running = _run_row(db_factory, run_id)
    assert running.lease_holder, "a running run holds a lease"
    assert running.worker_pid
    container = runtime.find(session_id)
    assert container is not None
    seen = len(get_json(client, f"/api/v1/runs/{run_id}/events", headers)["events"])
    live = redis.Redis.from_url(settings.redis_url)

    def stored() -> int:
        with db_factory() as db:
            return len(db.scalars(select(Event.id).where(Event.run_id == running.id)).all())

    # Killed while tails have seen events PostgreSQL has not (it stores them in batches).
    wait_for(
        lambda: len(streamed(live, session_id, run_id)) > stored(),
        timeout=30,
        what="an event streamed but not yet stored",
    )
    os.kill(running.worker_pid, signal.SIGKILL)  # the pool process; its parent respawns it

    # Celery redelivers the task at once; it waits out the lease, then settles the run.
    lost = wait_run(client, headers, run_id, timeout=120)
    assert lost["status"] == "failed", lost
    assert lost["error_code"] == "worker_lost", lost
    assert lost["error"].startswith("worker_lost:"), lost
    events = get_json(client, f"/api/v1/runs/{run_id}/events", headers)["events"]
    assert len(events) > seen, "what it streamed is kept, and its end is recorded"
    assert events[-1]["type"] == "ccq.run.finished"
    # Its last events were only in Redis when it died (stored every half second): the
    # history holds them too, exactly what the tails saw.
    assert [e["seq"] for e in events] == [e["seq"] for e in streamed(live, session_id, run_id)]
    replaced = runtime.find(session_id)
    assert replaced is None or replaced.id != container.id, "the CLI died with its container"
    assert prompt_calls(model, nonce) == 1, "the prompt was never sent again"

    nxt = queue_run(client, headers, session_id, "still here after the loss")
    assert wait_run(client, headers, nxt)["status"] == "succeeded"
    session = get_json(client, f"/api/v1/sessions/{session_id}", headers)["session"]
    assert session["status"] == "idle"


@pytest.fixture
def reconciler(settings: Settings, services: Services, runtime: ContainerRuntime) -> Reconciler:
    """Beat's reconciler as a worker builds it, on the test stack (runs it dispatches go
    to the stack's real worker)."""
    client = redis.Redis.from_url(settings.redis_url)
    lost_runs = LostRuns(client, runtime, RunListeners())
    return Reconciler(settings, client, lost_runs, RunListeners(), services.enqueue)


def _lose(db_factory: sessionmaker[DbSession], settings: Settings, run_id: str) -> None:
    """Kill ``run_id``'s pool process and let its lease and lock run out."""
    run = _run_row(db_factory, run_id)
    assert run.worker_pid is not None
    os.kill(run.worker_pid, signal.SIGKILL)
    client = redis.Redis.from_url(settings.redis_url)
    _expire_lease(db_factory, run_id)  # now, rather than wait (the worker is gone anyway)
    wait_for(
        lambda: not client.exists(f"ccq:lock:session:{run.session_id}"),
        timeout=60,
        what="the dead holder's lock to expire",
    )


def _expire_lease(db_factory: sessionmaker[DbSession], run_id: str) -> None:
    with db_factory() as db:
        db.execute(
            update(Run)
            .where(Run.id == uuid.UUID(run_id))
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.commit()


def test_the_reconciler_leaves_a_run_alone_while_its_session_lock_is_held(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    reconciler: Reconciler,
    worker: WorkerProcess,
) -> None:
    """PostgreSQL missed the renewals but the worker is alive: its lock says so."""
    headers = auth(settings)
    _, run_id = _streaming_session(client, headers, f"held-{uuid.uuid4().hex[:8]}")
    holder = _run_row(db_factory, run_id).lease_holder
    _expire_lease(db_factory, run_id)
    with UnitOfWork(db_factory) as uow:
        reconciler.reconcile(uow)  # (other tests' leftovers it may settle are not ours)
    after = _run_row(db_factory, run_id)
    assert (after.status, after.lease_holder) == ("running", holder)
    post_json(client, f"/api/v1/runs/{run_id}/cancel", {}, headers, 202)
    assert wait_run(client, headers, run_id)["status"] == "cancelled"


def test_the_reconciler_settles_a_lost_run_and_requeues_it_when_the_session_asks(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    reconciler: Reconciler,
    model: ModelServer,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    nonce = f"retry-{uuid.uuid4().hex[:8]}"
    session_id, run_id = _streaming_session(client, headers, nonce, retry_on_worker_loss=True)
    session = get_json(client, f"/api/v1/sessions/{session_id}", headers)["session"]
    assert session["options"]["retry_on_worker_loss"] is True
    first_holder = _run_row(db_factory, run_id).lease_holder
    _lose(db_factory, settings, run_id)

    # Whichever comes first settles it, the redelivered task or the reconciler; either way
    # it runs again (and a second settlement finds nothing to do).
    with UnitOfWork(db_factory) as uow:
        reconciler.reconcile(uow)
    again = wait_run(client, headers, run_id, timeout=120)
    assert again["status"] == "succeeded", again
    assert again["attempts"] == 2, again
    assert _run_row(db_factory, run_id).lease_holder is None
    assert first_holder is not None
    events = get_json(client, f"/api/v1/runs/{run_id}/events", headers)["events"]
    requeued = [e for e in events if e["type"] == "ccq.run.requeued"]
    assert [e["data"]["reason"] for e in requeued] == ["worker_lost"], events
    assert prompt_calls(model, nonce) == 2, "once per delivery the rule allows"


def test_the_reconciler_dispatches_a_queued_run_whose_task_was_lost(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    reconciler: Reconciler,
    worker: WorkerProcess,
) -> None:
    """As after a Redis that lost its data: the run is queued in PostgreSQL, no task."""
    headers = auth(settings)
    session_id = create_session(client, headers)["session"]["id"]
    # A run row as the API writes it, whose task never reached the broker.
    with db_factory() as db:
        session_uuid = uuid.UUID(session_id)
        seq = (db.scalar(select(Run.seq).where(Run.session_id == session_uuid)) or 0) + 1
        run = Run(
            session_id=session_uuid,
            owner="alice",
            seq=seq,
            prompt="found again",
            created_at=datetime.now(UTC) - timedelta(seconds=settings.redispatch_after + 5),
        )
        db.add(run)
        db.commit()
        run_id = str(run.id)

    with UnitOfWork(db_factory) as uow:
        counts = reconciler.reconcile(uow)
    assert counts["redispatched"] >= 1, counts  # others' leftover rows may be among them
    dispatched_at = _run_row(db_factory, run_id).dispatched_at
    assert dispatched_at is not None
    with UnitOfWork(db_factory) as uow:
        reconciler.reconcile(uow)
    assert _run_row(db_factory, run_id).dispatched_at == dispatched_at, "not sent twice"
    assert wait_run(client, headers, run_id)["status"] == "succeeded"


def test_a_lock_held_elsewhere_keeps_the_lost_run_rule_off(
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    runtime: ContainerRuntime,
    client: FlaskClient,
    worker: WorkerProcess,
) -> None:
    """The rule takes the session's lock first: while another holds it, nothing happens."""
    headers = auth(settings)
    created = create_session(client, headers, "ok")
    session_id, run_id = created["session"]["id"], created["run"]["id"]
    wait_run(client, headers, run_id)
    redis_client = redis.Redis.from_url(settings.redis_url)
    lock = SessionLock(redis_client, uuid.UUID(session_id), "someone-else")
    assert lock.acquire()
    try:
        with UnitOfWork(db_factory) as uow:
            status = LostRuns(redis_client, runtime, RunListeners()).settle(uow, uuid.UUID(run_id))
        assert status is None
    finally:
        lock.release()
    with db_factory() as db:
        stored = db.scalars(
            select(Event.type).where(Event.run_id == uuid.UUID(run_id)).order_by(Event.seq)
        ).all()
    assert stored[-1] == "ccq.run.finished"
