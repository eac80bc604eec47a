"""Webhook notifications through the real worker, PostgreSQL and Redis.

Rows are written straight into the test database (a finished batch, a finished run of a
session with a ``notify_url``); the tasks are sent as the batch closer and the executor
send them, by name with only an ID. A receiver on 127.0.0.1 (the worker runs on this
host) answers from a script, so a first attempt can fail on purpose.

How "no second POST" is asserted without sleeping: the tasks keep no result
(``ignore_result=True``), but Celery lets a caller turn results back on for one call
(``send_task(..., ignore_result=False)``, kept across ``self.retry``). The test waits for
that call's final result, so when it has the answer the task (and every retry it
scheduled) has finished, and the receiver's count is final.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import NotRegistered
from celery.exceptions import TimeoutError as CeleryTimeoutError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Batch, BatchStatus, Run, RunStatus, Session
from orchestrator.notify.delivery import Kind, sending_key, sent_key
from orchestrator.notify.notices import load_batch_notice, run_wants_notice
from orchestrator.settings import Settings
from tests.processes import WorkerProcess
from tests.waiting import wait_for
from tests.webhooks import SECRET, ScriptedReceiver

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 60.0


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    server = ScriptedReceiver()
    yield server
    server.close()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _finished_batch(
    db_factory: sessionmaker[DbSession], notify_url: str | None, statuses: list[RunStatus]
) -> uuid.UUID:
    """A closed batch whose items (a session and its first run each) ended as given."""
    now = datetime.now(UTC)
    all_good = all(s == RunStatus.SUCCEEDED for s in statuses)
    with session_scope(db_factory) as dbs:
        batch = Batch(
            id=uuid.uuid4(),
            owner="alice",
            status=BatchStatus.SUCCEEDED if all_good else BatchStatus.FAILED,
            defaults={},
            total_items=len(statuses),
            notify_url=notify_url,
            meta={"name": "notify test"},
            total_cost_usd=Decimal("0.25") * len(statuses),
            finished_at=now,
        )
        dbs.add(batch)
        dbs.flush()
        for index, status in enumerate(statuses):
            session = Session(owner="alice", batch_id=batch.id, batch_index=index, status="idle")
            dbs.add(session)
            dbs.flush()
            dbs.add(
                Run(
                    session_id=session.id,
                    owner="alice",
                    seq=1,
                    prompt=f"item {index}",
                    status=status,
                    total_cost_usd=Decimal("0.25"),
                    started_at=now - timedelta(seconds=5),
                    finished_at=now,
                )
            )
        return batch.id


def _run(
    db_factory: sessionmaker[DbSession],
    notify_url: str | None,
    status: RunStatus = RunStatus.SUCCEEDED,
    result: str | None = "all done",
) -> uuid.UUID:
    now = datetime.now(UTC)
    with session_scope(db_factory) as dbs:
        session = Session(owner="alice", notify_url=notify_url, status="idle")
        dbs.add(session)
        dbs.flush()
        run = Run(
            session_id=session.id,
            owner="alice",
            seq=1,
            prompt="do it",
            status=status,
            result_text=result if status.is_final else None,
            total_cost_usd=Decimal("0.0123") if status.is_final else None,
            started_at=now - timedelta(seconds=12),
            finished_at=now if status.is_final else None,
        )
        dbs.add(run)
        dbs.flush()
        return run.id


def _notify(celery_app: Celery, task: str, object_id: uuid.UUID, **options: Any) -> Any:
    """Send the task as ccq does (only the ID) and wait for its final outcome."""
    sent = celery_app.send_task(task, args=[str(object_id)], ignore_result=False, **options)
    try:
        return sent.get(timeout=RESULT_TIMEOUT)
    except (CeleryTimeoutError, NotRegistered) as exc:
        raise AssertionError(
            f"{task}: {type(exc).__name__}: is 'tasks.notify' in the worker's include list "
            "(tasks/celery_app.py)?"
        ) from None


def test_a_finished_batch_is_announced_once_even_when_the_first_attempt_failed(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    redis_client: redis.Redis,
    receiver: ScriptedReceiver,
) -> None:
    receiver.script = [(500, {})]
    batch_id = _finished_batch(
        db_factory, receiver.hook("batch"), [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED]
    )

    outcome = _notify(celery_app, "ccq.notify_batch", batch_id)

    assert outcome == {
        "kind": "batch",
        "id": str(batch_id),
        "delivered": True,
        "status": 200,
        "attempts": 2,
    }
    assert [r.status for r in receiver.seen("batch")] == [500, 200]
    first, second = receiver.seen("batch")
    assert first.body == second.body  # the retry sends the same notification
    assert second.user_agent == "ccq-notify/1"
    body = second.body
    assert body["ccq"]["event"] == "batch.finished"
    assert body["ccq"]["batch"]["id"] == str(batch_id)
    assert body["ccq"]["batch"]["status"] == "succeeded"
    assert body["ccq"]["batch"]["counts"] == {"succeeded": 2}
    assert body["ccq"]["batch"]["total_cost_usd"] == 0.5
    assert body["text"].startswith(f"ccq batch {str(batch_id)[:8]}… (notify test) succeeded:")
    assert "2/2 succeeded, $0.50" in body["content"]
    assert redis_client.get(sent_key(Kind.BATCH, batch_id)) == b"1"
    assert redis_client.ttl(sent_key(Kind.BATCH, batch_id)) > 6 * 24 * 3600

    # Sent again (a redelivery, a second closer): answered without a POST.
    again = _notify(celery_app, "ccq.notify_batch", batch_id)

    assert again["skipped"] == "already_sent"
    assert [r.status for r in receiver.seen("batch")] == [500, 200]
    # The webhook's secret never reaches the worker's log, only its redacted form.
    log = worker.log_path.read_text(errors="replace")
    assert SECRET not in log
    assert f"{receiver.url}/…" in log


def test_a_finished_run_is_announced_to_its_sessions_notify_url(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    receiver: ScriptedReceiver,
) -> None:
    run_id = _run(db_factory, receiver.hook("run"), result="<!channel> all done")

    outcome = _notify(celery_app, "ccq.notify_run", run_id)

    assert outcome["delivered"] is True
    assert outcome["attempts"] == 1
    (seen,) = receiver.seen("run")
    run = seen.body["ccq"]["run"]
    assert (run["id"], run["status"], run["result"]) == (
        str(run_id),
        "succeeded",
        "<!channel> all done",
    )
    assert run["total_cost_usd"] == 0.0123
    assert seen.body["text"].endswith("\n&lt;!channel&gt; all done")
    assert seen.body["allowed_mentions"] == {"parse": []}

    assert _notify(celery_app, "ccq.notify_run", run_id)["skipped"] == "already_sent"
    assert len(receiver.seen("run")) == 1


def test_a_rate_limited_receiver_is_retried_after_the_time_it_asked_for(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    receiver: ScriptedReceiver,
) -> None:
    receiver.script = [(429, {"Retry-After": "1"})]
    run_id = _run(db_factory, receiver.hook("limited"))

    outcome = _notify(celery_app, "ccq.notify_run", run_id)

    assert (outcome["delivered"], outcome["attempts"]) == (True, 2)
    assert [r.status for r in receiver.seen("limited")] == [429, 200]


def test_a_receiver_that_refuses_is_not_retried(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    redis_client: redis.Redis,
    receiver: ScriptedReceiver,
) -> None:
    receiver.then = 404
    batch_id = _finished_batch(db_factory, receiver.hook("gone"), [RunStatus.FAILED])

    outcome = _notify(celery_app, "ccq.notify_batch", batch_id)

    assert outcome["delivered"] is False
    assert outcome["gave_up"] is True
    assert (outcome["status"], outcome["attempts"]) == (404, 1)
    assert len(receiver.seen("gone")) == 1
    assert not redis_client.exists(sent_key(Kind.BATCH, batch_id))


def test_nothing_is_sent_without_a_url_or_before_the_end(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    receiver: ScriptedReceiver,
) -> None:
    no_url_batch = _finished_batch(db_factory, None, [RunStatus.SUCCEEDED])
    no_url_run = _run(db_factory, None)
    running = _run(db_factory, receiver.hook("early"), status=RunStatus.RUNNING)

    assert _notify(celery_app, "ccq.notify_batch", no_url_batch)["skipped"] == "no_notify_url"
    assert _notify(celery_app, "ccq.notify_run", no_url_run)["skipped"] == "no_notify_url"
    assert _notify(celery_app, "ccq.notify_run", running)["skipped"] == "not_finished"
    assert _notify(celery_app, "ccq.notify_run", uuid.uuid4())["skipped"] == "not_found"
    assert receiver.received == []


def test_a_notification_being_sent_elsewhere_is_not_sent_twice(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    redis_client: redis.Redis,
    receiver: ScriptedReceiver,
) -> None:
    run_id = _run(db_factory, receiver.hook("busy"))
    # Another task is POSTing this run's notification right now.
    redis_client.set(sending_key(Kind.RUN, run_id), "some-other-task", ex=60)

    assert _notify(celery_app, "ccq.notify_run", run_id)["skipped"] == "in_flight"
    assert receiver.seen("busy") == []

    # The holder's own task, delivered again after its worker died, takes over.
    holder = str(uuid.uuid4())
    redis_client.set(sending_key(Kind.RUN, run_id), holder, ex=60)

    outcome = _notify(celery_app, "ccq.notify_run", run_id, task_id=holder)

    assert outcome["delivered"] is True
    assert len(receiver.seen("busy")) == 1
    assert not redis_client.exists(sending_key(Kind.RUN, run_id))


def test_only_ended_runs_of_sessions_with_a_url_want_a_notice(
    db_factory: sessionmaker[DbSession], receiver: ScriptedReceiver
) -> None:
    ended = _run(db_factory, receiver.hook("x"))
    running = _run(db_factory, receiver.hook("x"), status=RunStatus.RUNNING)
    no_url = _run(db_factory, None)
    with session_scope(db_factory) as dbs:
        assert run_wants_notice(dbs, ended)
        assert not run_wants_notice(dbs, running)
        assert not run_wants_notice(dbs, no_url)
        assert not run_wants_notice(dbs, uuid.uuid4())


def test_a_batch_notice_counts_items_by_their_runs_state(
    db_factory: sessionmaker[DbSession], receiver: ScriptedReceiver
) -> None:
    statuses = [RunStatus.SUCCEEDED] * 3 + [RunStatus.FAILED, RunStatus.TIMED_OUT]
    batch_id = _finished_batch(db_factory, receiver.hook("counts"), statuses)
    with session_scope(db_factory) as dbs:
        notice = load_batch_notice(dbs, batch_id)
        assert load_batch_notice(dbs, uuid.uuid4()) is None
    assert notice is not None
    assert (notice.url, notice.finished) == (receiver.hook("counts"), True)
    batch = notice.payload["ccq"]["batch"]
    assert batch["counts"] == {"succeeded": 3, "failed": 1, "timed_out": 1}
    assert batch["status"] == "failed"
    assert "3/5 succeeded, 1 failed, 1 timed out, $1.25" in notice.payload["content"]


def test_a_batch_left_open_is_closed_by_the_sweeper_and_announced_once(
    celery_app: Celery,
    worker: WorkerProcess,
    db_factory: sessionmaker[DbSession],
    receiver: ScriptedReceiver,
) -> None:
    batch_id = _finished_batch(
        db_factory, receiver.hook("lost"), [RunStatus.SUCCEEDED, RunStatus.FAILED]
    )
    with session_scope(db_factory) as dbs:  # every item ended, but nobody closed the batch
        batch = dbs.get(Batch, batch_id)
        assert batch is not None
        batch.status, batch.finished_at = BatchStatus.RUNNING, None
        batch.created_at = datetime.now(UTC) - timedelta(minutes=10)

    swept = _sweep(celery_app)

    assert swept["batches_closed"] >= 1
    with db_factory() as dbs:
        closed = dbs.get(Batch, batch_id)
        assert closed is not None
        assert closed.status == BatchStatus.FAILED  # one item failed
        assert closed.finished_at is not None
    seen = wait_for(lambda: receiver.seen("lost"), timeout=60, what="the batch's notification")
    assert seen[0].body["ccq"]["batch"]["status"] == "failed"
    assert _sweep(celery_app)["batches_closed"] == 0  # closed once, announced once


def _sweep(celery_app: Celery) -> dict[str, int]:
    result: dict[str, int] = celery_app.send_task("ccq.sweep", ignore_result=False).get(
        timeout=RESULT_TIMEOUT
    )
    return result
