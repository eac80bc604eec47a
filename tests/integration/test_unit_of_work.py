"""One database session per request or task, and what follows its commits: on the real
PostgreSQL, and through the API when the task queue cannot take a task."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.extensions import Services
from orchestrator.db.models import Batch, Run, Session
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.sessions import NewSession, SessionService
from orchestrator.errors import QueueUnavailable
from orchestrator.settings import Settings
from tasks.enqueue import Enqueuer
from tests.api_helpers import auth

pytestmark = pytest.mark.integration


def _new_session(db: DbSession, owner: str = "uow-owner") -> uuid.UUID:
    session, _ = SessionService(db, owner).create(NewSession(metadata={"t": "uow"}))
    db.flush()
    return session.id


def _exists(db_factory: sessionmaker[DbSession], session_id: uuid.UUID) -> bool:
    with db_factory() as db:
        return db.get(Session, session_id) is not None


def test_hooks_run_after_the_commit_and_their_writes_are_committed_too(
    db_factory: sessionmaker[DbSession],
) -> None:
    seen: list[bool] = []
    with UnitOfWork(db_factory) as uow:
        first = _new_session(uow.db)
        follow_up: list[uuid.UUID] = []

        def hook(db: DbSession) -> None:
            seen.append(_exists(db_factory, first))  # another connection sees the commit
            follow_up.append(_new_session(db))

        uow.after_commit(hook)
        assert seen == []
        uow.commit()
    assert seen == [True]
    assert _exists(db_factory, follow_up[0])


def test_a_rollback_drops_the_hooks(db_factory: sessionmaker[DbSession]) -> None:
    ran: list[str] = []
    with UnitOfWork(db_factory) as uow:
        created = _new_session(uow.db)
        uow.after_commit(lambda _db: ran.append("hook"))
        uow.rollback()
        uow.commit()  # nothing pending: no hook left to run
    assert ran == []
    assert not _exists(db_factory, created)


def test_a_failing_hook_rolls_back_its_own_work_only(db_factory: sessionmaker[DbSession]) -> None:
    later: list[str] = []
    made: list[uuid.UUID] = []

    def failing(db: DbSession) -> None:
        made.append(_new_session(db))
        raise RuntimeError("the publish failed")

    with UnitOfWork(db_factory) as uow:
        first = _new_session(uow.db)
        uow.after_commit(failing)
        uow.after_commit(lambda _db: later.append("never"))
        with pytest.raises(RuntimeError, match="publish failed"):
            uow.commit()
    assert _exists(db_factory, first)
    assert not _exists(db_factory, made[0])
    assert later == []


def test_closing_without_a_commit_keeps_nothing(db_factory: sessionmaker[DbSession]) -> None:
    with UnitOfWork(db_factory) as uow:
        created = _new_session(uow.db)
    assert not _exists(db_factory, created)


class RefusingQueue(Enqueuer):
    """The task queue down, as the API meets it: every send raises QueueUnavailable."""

    def __init__(self, real: Enqueuer) -> None:
        self.celery = real.celery

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise QueueUnavailable("the task queue is unavailable: ConnectionError")

    run = batch_items = fanout = close_batch = _refuse


@pytest.fixture
def queue_down(services: Services) -> Iterator[None]:
    real = services.enqueue
    services.enqueue = RefusingQueue(real)
    yield
    services.enqueue = real


def test_a_run_the_queue_refused_is_failed_and_the_client_told_to_retry(
    client: FlaskClient, settings: Settings, db_factory: sessionmaker[DbSession], queue_down: None
) -> None:
    reply = client.post("/api/v1/sessions", json={"prompt": "hello"}, headers=auth(settings))
    assert reply.status_code == 503, reply.json
    assert reply.json is not None
    assert "the run was not queued (it is marked failed)" in reply.json["error"]["message"]
    with db_factory() as db:
        run = db.scalars(select(Run).order_by(Run.created_at.desc()).limit(1)).one()
    assert run.status == "failed"
    assert run.error == "not queued: redis was unavailable"


def test_a_fanout_the_queue_refused_fails_its_children_runs(
    client: FlaskClient, settings: Settings, db_factory: sessionmaker[DbSession], queue_down: None
) -> None:
    headers = auth(settings)
    with db_factory() as db:
        parent = SessionService(db, "alice").create(NewSession())[0]
        db.commit()
    reply = client.post(
        f"/api/v1/sessions/{parent.id}/fanout",
        json={"prompts": ["a", "b"], "then": "sum up"},
        headers=headers,
    )
    assert reply.status_code == 503, reply.json
    with db_factory() as db:
        statuses = db.scalars(
            select(Run.status)
            .join(Session, Session.id == Run.session_id)
            .where(Session.parent_id == parent.id)
        ).all()
    assert sorted(statuses) == ["failed", "failed"]


def test_a_batch_the_queue_refused_is_accepted_and_waits_for_the_sweeper(
    client: FlaskClient, settings: Settings, db_factory: sessionmaker[DbSession], queue_down: None
) -> None:
    reply = client.post(
        "/api/v1/batches",
        json={"items": [{"prompt": "x"}, {"prompt": "y"}]},
        headers=auth(settings),
    )
    assert reply.status_code == 201, reply.json
    batch_id = uuid.UUID(reply.json["batch"]["id"])  # type: ignore[index]
    with db_factory() as db:
        assert db.get(Batch, batch_id) is not None
        released = db.scalars(
            select(Run.dispatched_at)
            .join(Session, Session.id == Run.session_id)
            .where(Session.batch_id == batch_id)
        ).all()
    assert released == [None, None]  # nothing marked sent that was not
