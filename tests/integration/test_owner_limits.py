"""Owner limits that no way of creating runs bypasses: the pending-runs cap for roots,
runs, children and fan-outs (decided under the owner's lock, so concurrent requests
cannot overshoot), the cap on unfinished batch items, the batch window shared by all of an
owner's batches, and the per-owner session-creation rate.

Each test builds its own app on the real PostgreSQL and Redis with lowered limits and a
fresh owner. Task sends are recorded instead of queued: the limits are decided in the
database, and no worker should start dozens of containers for them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from api.extensions import EXTENSION_KEY, Services
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Batch, Run, RunStatus, Session
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import batches
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.batches import BatchItem, BatchService, NewBatch
from orchestrator.settings import Settings
from tests.api_helpers import auth

pytestmark = pytest.mark.integration


class RecordingEnqueue:
    """Stands in for the Enqueuer: remembers what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        def send(*args: Any, **kwargs: Any) -> None:
            with self._lock:
                self.sent.append((name, args))

        return send


@pytest.fixture
def owner() -> str:
    return f"limits-{uuid.uuid4().hex[:10]}"


def _app(settings: Settings, **overrides: Any) -> Flask:
    app = create_app(settings.model_copy(update=overrides))
    services: Services = app.extensions[EXTENSION_KEY]
    services.enqueue = RecordingEnqueue()  # type: ignore[assignment]
    return app


@pytest.fixture
def limited(settings: Settings) -> Iterator[Flask]:
    """Pending cap 40, fan-outs of 16 allowed (the stack's tree limits are lower)."""
    app = _app(
        settings,
        max_pending_runs_per_owner=40,
        max_children=32,
        max_tree_sessions=40,
        max_depth=2,
    )
    yield app
    app.extensions[EXTENSION_KEY].close()


@pytest.fixture
def cleanup(db_factory: sessionmaker[DbSession], owner: str) -> Iterator[None]:
    """The owner's runs end cancelled: a task queued for one later is a no-op."""
    yield
    with session_scope(db_factory) as db:
        db.execute(
            update(Run)
            .where(Run.owner == owner, Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]))
            .values(status=RunStatus.CANCELLED, finished_at=datetime.now(UTC))
        )


def _pending(db_factory: sessionmaker[DbSession], owner: str) -> int:
    with db_factory() as db:
        return int(
            db.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.owner == owner, Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]))
            )
            or 0
        )


def _root(client: FlaskClient, headers: dict[str, str]) -> str:
    response = client.post("/api/v1/sessions", json={}, headers=headers)
    assert response.status_code == 201, response.json
    session_id: str = response.json["session"]["id"]  # type: ignore[index]
    return session_id


def _message(response: Any) -> str:
    message: str = response.json["error"]["message"]
    return message


def _assert_pending_429(response: Any) -> None:
    assert response.status_code == 429, response.json
    assert response.json["error"]["code"] == "too_many_requests"
    assert "CCQ_MAX_PENDING_RUNS_PER_OWNER" in _message(response)
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.usefixtures("cleanup")
def test_twenty_roots_fanning_out_sixteen_at_once_stop_at_the_pending_cap(
    limited: Flask, settings: Settings, db_factory: sessionmaker[DbSession], owner: str
) -> None:
    headers = auth(settings, owner)
    client = limited.test_client()
    roots = [_root(client, headers) for _ in range(20)]
    prompts = [f"part {i}" for i in range(16)]

    def fan_out(root: str) -> Any:
        return limited.test_client().post(
            f"/api/v1/sessions/{root}/fanout", json={"prompts": prompts}, headers=headers
        )

    # All at once: without the owner's lock several would see room for the last slots.
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(fan_out, roots))

    accepted = [r for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code != 202]
    assert len(accepted) == 2  # 2 x 16 = 32 fit in 40; a third would make 48
    for response in refused:
        _assert_pending_429(response)
    assert _pending(db_factory, owner) == 32

    # Children count too: 8 more fit, the ninth is refused; a root's prompt as well.
    for i in range(8):
        spawned = client.post(
            f"/api/v1/sessions/{roots[-1]}/children", json={"prompt": f"c{i}"}, headers=headers
        )
        assert spawned.status_code == 201, spawned.json
    _assert_pending_429(
        client.post(
            f"/api/v1/sessions/{roots[-1]}/children", json={"prompt": "one more"}, headers=headers
        )
    )
    _assert_pending_429(client.post("/api/v1/sessions", json={"prompt": "x"}, headers=headers))
    _assert_pending_429(
        client.post(f"/api/v1/sessions/{roots[0]}/runs", json={"prompt": "x"}, headers=headers)
    )
    assert _pending(db_factory, owner) == 40


@pytest.mark.usefixtures("cleanup")
def test_a_fan_out_larger_than_the_cap_itself_is_a_409(
    settings: Settings, db_factory: sessionmaker[DbSession], owner: str
) -> None:
    app = _app(settings, max_pending_runs_per_owner=3, max_children=32, max_tree_sessions=40)
    try:
        client, headers = app.test_client(), auth(settings, owner)
        root = _root(client, headers)
        response = client.post(
            f"/api/v1/sessions/{root}/fanout", json={"prompts": ["a"] * 4}, headers=headers
        )
    finally:
        app.extensions[EXTENSION_KEY].close()
    assert response.status_code == 409, response.json
    assert "CCQ_MAX_PENDING_RUNS_PER_OWNER" in _message(response)
    assert _pending(db_factory, owner) == 0


@pytest.mark.usefixtures("cleanup")
def test_concurrent_children_never_overshoot_the_pending_cap(
    settings: Settings, db_factory: sessionmaker[DbSession], owner: str
) -> None:
    app = _app(settings, max_pending_runs_per_owner=5, max_children=32, max_tree_sessions=40)
    try:
        headers = auth(settings, owner)
        root = _root(app.test_client(), headers)

        def spawn(i: int) -> int:
            return (
                app.test_client()
                .post(
                    f"/api/v1/sessions/{root}/children", json={"prompt": f"c{i}"}, headers=headers
                )
                .status_code
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(spawn, range(16)))
    finally:
        app.extensions[EXTENSION_KEY].close()
    assert sorted(statuses) == [201] * 5 + [429] * 11
    assert _pending(db_factory, owner) == 5


@pytest.mark.usefixtures("cleanup")
def test_batches_have_their_own_cap_on_unfinished_items(
    settings: Settings, db_factory: sessionmaker[DbSession], owner: str
) -> None:
    app = _app(settings, max_pending_runs_per_owner=1, max_pending_batch_items_per_owner=5)
    try:
        client, headers = app.test_client(), auth(settings, owner)
        items = {"items": [{"prompt": f"p{i}"} for i in range(3)]}
        first = client.post("/api/v1/batches", json=items, headers=headers)
        assert first.status_code == 201, first.json  # batch items skip the interactive cap
        second = client.post("/api/v1/batches", json=items, headers=headers)
        assert second.status_code == 429, second.json
        assert "CCQ_MAX_PENDING_BATCH_ITEMS_PER_OWNER" in _message(second)
        assert int(second.headers["Retry-After"]) > 0
        # Interactive runs are capped apart from the batch's three.
        created = client.post("/api/v1/sessions", json={"prompt": "x"}, headers=headers)
        assert created.status_code == 201, created.json
        assert _pending(db_factory, owner) == 4
    finally:
        app.extensions[EXTENSION_KEY].close()


def test_session_creation_is_rate_limited_per_owner(settings: Settings, owner: str) -> None:
    app = _app(settings, sessions_per_minute_per_owner=3)
    try:
        client, headers = app.test_client(), auth(settings, owner)
        statuses = []
        refused = []
        for _ in range(7):
            response = client.post("/api/v1/sessions", json={}, headers=headers)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused.append(response)
        # Another owner is not affected.
        other = client.post("/api/v1/sessions", json={}, headers=auth(settings, owner + "-b"))
    finally:
        app.extensions[EXTENSION_KEY].close()
    # 7 requests span at most two one-minute windows of 3 each.
    assert statuses[:3] == [201, 201, 201]
    assert set(statuses) <= {201, 429}
    assert 1 <= len(refused) <= 4
    for response in refused:
        assert "CCQ_SESSIONS_PER_MINUTE_PER_OWNER" in _message(response)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert other.status_code == 201


# --- the batch window, shared by an owner's batches -------------------------------------


def _make_batches(db_factory: sessionmaker[DbSession], owner: str) -> list[uuid.UUID]:
    ids = []
    for b in range(5):
        with session_scope(db_factory) as db:
            batch, _ = BatchService(db, owner).create(
                NewBatch(items=[BatchItem(prompt=f"b{b} i{i}") for i in range(3)])
            )
            ids.append(batch.id)
    return ids


def _in_flight(db: DbSession, owner: str) -> dict[uuid.UUID, int]:
    rows = db.execute(
        select(Session.batch_id, func.count())
        .join(Run, Run.session_id == Session.id)
        .where(
            Run.owner == owner,
            Run.dispatched_at.is_not(None),
            Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
        )
        .group_by(Session.batch_id)
    ).all()
    return {batch_id: count for batch_id, count in rows if batch_id is not None}


@pytest.mark.usefixtures("cleanup")
def test_five_batches_of_one_owner_share_one_window_round_robin(
    db_factory: sessionmaker[DbSession], owner: str
) -> None:
    ids = _make_batches(db_factory, owner)
    order: list[uuid.UUID] = []
    peak = 0
    for _ in range(100):
        with session_scope(db_factory) as db:
            released = batches.release(db, owner, max_runs_per_owner=8, owner_window=2)
            order += [b for b, runs in released.items() for _ in runs]
        with session_scope(db_factory) as db:
            flying = _in_flight(db, owner)
            peak = max(peak, sum(flying.values()))
            if not flying:
                break
            # The oldest released item runs, then ends.
            first = db.scalars(
                select(Run)
                .where(
                    Run.owner == owner,
                    Run.dispatched_at.is_not(None),
                    Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
                )
                .order_by(Run.dispatched_at, Run.id)
                .limit(1)
            ).one()
            first.status = RunStatus.SUCCEEDED
            first.finished_at = datetime.now(UTC)
    assert peak == 2
    assert len(order) == 15
    # Fewest in flight first, the oldest batch among equals: every batch starts before
    # any batch gets its second item.
    assert order[:5] == ids


@pytest.mark.usefixtures("cleanup")
def test_concurrent_releases_never_pass_the_owners_window(
    db_factory: sessionmaker[DbSession], owner: str
) -> None:
    _make_batches(db_factory, owner)

    def release(_: int) -> int:
        with session_scope(db_factory) as db:
            released = batches.release(db, owner, max_runs_per_owner=8, owner_window=2)
            return sum(map(len, released.values()))

    with ThreadPoolExecutor(max_workers=5) as pool:
        counts = list(pool.map(release, range(10)))
    assert sum(counts) == 2
    with db_factory() as db:
        assert sum(_in_flight(db, owner).values()) == 2


@pytest.mark.usefixtures("cleanup")
def test_a_batchs_own_concurrency_still_applies_within_the_owners_window(
    db_factory: sessionmaker[DbSession], owner: str
) -> None:
    with session_scope(db_factory) as db:
        batch, _ = BatchService(db, owner).create(
            NewBatch(items=[BatchItem(prompt=f"i{i}") for i in range(6)], max_concurrency=1)
        )
    with session_scope(db_factory) as db:
        released = batches.release(db, owner, max_runs_per_owner=8, owner_window=4)
    assert {b: len(r) for b, r in released.items()} == {batch.id: 1}


@pytest.mark.usefixtures("cleanup")
def test_an_ended_item_frees_its_slot_for_another_batch_and_closes_its_own(
    db_factory: sessionmaker[DbSession], services: Services, owner: str
) -> None:
    created = []
    for name in ("first", "second"):
        with session_scope(db_factory) as db:
            batch, _ = BatchService(db, owner).create(NewBatch(items=[BatchItem(prompt=name)]))
            created.append(batch.id)
    sender = RecordingEnqueue()
    flow = BatchFlow(sender, services.redis, max_runs_per_owner=8, ttl=60, window_per_owner=1)
    with UnitOfWork(db_factory) as uow:
        assert flow.release_owner(uow, owner) == 1
        uow.commit()
    with session_scope(db_factory) as db:
        (first_run,) = db.scalars(
            select(Run).where(Run.owner == owner, Run.dispatched_at.is_not(None))
        ).all()
        first_run.status = RunStatus.SUCCEEDED
        first_run.finished_at = datetime.now(UTC)
        first_run_id = first_run.id

    with UnitOfWork(db_factory) as uow:
        flow.item_ended(uow, first_run_id)

    with db_factory() as db:
        assert _in_flight(db, owner) == {created[1]: 1}  # the slot went to the other batch
        assert db.get(Batch, created[0]).finished_at is not None  # type: ignore[union-attr]
    assert [args for name, args in sender.sent if name == "batch_items"][-1] != ([],)
