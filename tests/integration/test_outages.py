"""ccq's own dependencies going away in the middle of a streaming run.

PostgreSQL refuses the test database for a while (``ALLOW_CONNECTIONS false`` and every
connection ended: what a worker sees when the server restarts), on the machine's real
server, touching no other database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from model_server.server import ModelServer
from orchestrator.db.models import Event
from orchestrator.settings import Settings
from tests.api_helpers import auth, create_session, get_json, queue_run, wait_run
from tests.processes import WorkerProcess
from tests.run_records import prompt_calls, streamed
from tests.waiting import wait_for


@contextmanager
def database_refused(settings: Settings) -> Iterator[None]:
    """The test database takes no connections, and has none, until the block ends."""
    url = make_url(settings.database_url)
    name = url.database
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        try:
            yield
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()


def test_a_postgresql_outage_mid_run_loses_and_repeats_nothing(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    model: ModelServer,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    nonce = f"pg-{uuid.uuid4().hex[:8]}"
    created = create_session(client, headers, f"{nonce} [[stream 80 0.25]]")
    session_id, run_id = created["session"]["id"], created["run"]["id"]
    live = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: len(streamed(live, session_id, run_id)) > 5, timeout=120, what="streaming")

    with database_refused(settings):
        during = len(streamed(live, session_id, run_id))
        # Tails go on getting the run's output while nothing can be stored.
        wait_for(
            lambda: len(streamed(live, session_id, run_id)) >= during + 8,
            timeout=60,
            what="events to flow while PostgreSQL is away",
        )

    run = wait_run(client, headers, run_id, timeout=120)
    assert run["status"] == "succeeded", run
    assert run["attempts"] == 1
    with db_factory() as db:
        stored = db.scalars(
            select(Event.seq).where(Event.run_id == uuid.UUID(run_id)).order_by(Event.seq)
        ).all()
    live_seqs = [e["seq"] for e in streamed(live, session_id, run_id)]
    assert list(stored) == list(range(len(stored))), "no gap and no duplicate"
    assert list(stored) == live_seqs, "PostgreSQL holds exactly what was streamed"
    assert prompt_calls(model, nonce) == 1

    nxt = queue_run(client, headers, session_id, "and afterwards")
    assert wait_run(client, headers, nxt)["status"] == "succeeded"
    history = get_json(client, f"/api/v1/runs/{run_id}/events", headers)["events"]
    assert [e["seq"] for e in history] == live_seqs
